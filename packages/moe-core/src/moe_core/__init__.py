"""moe-core: run Mixture-of-Experts models larger than memory on MLX.

`offload(model, path)` swaps every expert bank of a lazily loaded mlx-lm model for one that keeps
only some experts resident and reads the rest from the checkpoint when the router picks them. By
default the output is identical to the unmodified model's.

The public surface is what an embedding stack needs:
- the plan: `describe` (a model's `Geometry`, headers read once), `plan_budget` (a `Plan`: slots
  per layer and why), `fingerprint`, `parse_size` (sizes are bytes or text such as "16GB"), the
  memory backends (`detect_backend`, `Backend` and its CPU, Metal and CUDA kinds);
- `offload` and the `OffloadHandle` it returns (stats, resident sets, pins, observers), the
  choices it takes (`MISS_MODES`, `POLICIES`, `DEFAULT_POLICY`, `LOWBIT_BITS`) and the `ExpertCache` its
  layers (and the profile simulator) run, and `optimal_hits`, Belady's optimum they are
  measured against;
- `pack`, `verify_pack` and `PACK_NAME`, the packed expert layout (a CRC-32C per record, checked
  when a record is first read);
- `atomic_write`, how moe writes the files it reads back (all or nothing);
- the errors, all `MoEError`s.
Everything else is private (`_name.py`).
"""

from ._atomic import atomic_write
from ._backend import Backend, CPUBackend, CUDABackend, MetalBackend, detect_backend
from ._belady import optimal_hits
from ._cache import ExpertCache
from ._checkpoint import fingerprint
from ._errors import BudgetError, CheckpointError, MoEError, UnsupportedModelError
from ._geometry import Geometry, describe
from ._handle import OffloadHandle
from ._lowbit import LOWBIT_BITS
from ._miss import MISS_MODES
from ._offload import offload
from ._pack import PACK_NAME, pack, verify_pack
from ._plan import Plan, plan_budget
from ._policy import DEFAULT_POLICY, POLICIES
from ._size import parse_size

__all__ = [
    "DEFAULT_POLICY",
    "LOWBIT_BITS",
    "MISS_MODES",
    "PACK_NAME",
    "POLICIES",
    "Backend",
    "BudgetError",
    "CPUBackend",
    "CUDABackend",
    "CheckpointError",
    "ExpertCache",
    "Geometry",
    "MetalBackend",
    "MoEError",
    "OffloadHandle",
    "Plan",
    "UnsupportedModelError",
    "atomic_write",
    "describe",
    "detect_backend",
    "fingerprint",
    "offload",
    "optimal_hits",
    "pack",
    "parse_size",
    "plan_budget",
    "verify_pack",
]
