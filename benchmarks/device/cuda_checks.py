"""Facts about MLX's CUDA backend that the miss path depends on, measured on the GPU machine.

- whether a host view of an MLX array aliases its memory (it does on unified memory);
- how fast expert bytes reach a slot tensor: one expert at a time versus one batched copy per
  layer step (the staged path moe-core uses on CUDA).
"""

import json
import sys
import time

import mlx.core as mx
import numpy as np

from moe_core._slots import slot_tensor, upload

out = {"device": str(mx.default_device()), "device_info": {}}
for key, value in mx.device_info().items():
    if isinstance(value, (int, float, str)):
        out["device_info"][key] = value
try:
    slot_tensor(4, (1024,), mx.uint32, direct=True)
    out["host_view_aliases"] = True
except (RuntimeError, ValueError, TypeError) as e:
    out["host_view_aliases"] = f"no: {e}"

capacity, rows, cols = 64, 512, 256  # one 4-bit expert projection: 512 x 2048 -> 0.5 MB of uint32
array, host = slot_tensor(capacity, (rows, cols), mx.uint32, direct=False)
host[:] = np.random.default_rng(0).integers(0, 255, size=host.shape, dtype=np.uint8)
mb = host[0].nbytes / 1e6
for batch in (1, 10, 32):
    slots = list(range(batch))
    upload(array, host, slots)
    mx.eval(array)
    start = time.perf_counter()
    for _ in range(20):
        upload(array, host, slots)
        mx.eval(array)
    seconds = (time.perf_counter() - start) / 20
    out[f"upload_batch_{batch}"] = {"ms": seconds * 1e3, "gb_s": batch * mb / 1e3 / seconds}
ok = np.array_equal(np.array(array[3].view(mx.uint8)).ravel(), host[3])
out["upload_correct"] = bool(ok)
json.dump(out, sys.stdout, indent=1)
print()
