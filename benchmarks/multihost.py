"""One checkpoint on 1, 2 and 4 hosts with the same memory budget per host: what each host holds,
its hit rate, the expert bytes it reads per token, and the speed (reported, not asserted).

The "hosts" are Linux network namespaces on this machine, joined by a bridge (10.99.0.x), and the
model is split by MLX's ring backend started with mlx.launch, as on real machines; needs root.
They share this machine's cores, disk and page cache, so tok/s here says little about separate
machines; memory, hit rate and bytes read are what a host would see.

    python benchmarks/multihost.py --json benchmarks/results/multihost.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CHILD = """
import json, sys, time
import mlx.core as mx
from moe_runtime import Session

out, path, memory = sys.argv[1:4]
prompt_len, decode, temperature = int(sys.argv[4]), int(sys.argv[5]), float(sys.argv[6])
group = mx.distributed.init()
session = Session(path, memory=memory, group=group, max_context=1024, warm_start=False,
                  prefix_cache=False)
prompt = [(i * 7919) % 500 + 3 for i in range(prompt_len)]
start = time.perf_counter()
tokens, first, before = [], None, None
# Sampled (the same seed on every rank): a greedy answer of a random-weight model repeats a
# few tokens, and with them the same experts, which would hide what capacity does.
for r in session.stream(prompt, max_tokens=decode + 1, temperature=temperature, seed=0):
    tokens.append(r.token)
    if first is None:
        first = time.perf_counter()
        before = session.stats()
end = time.perf_counter()
after = session.stats()
misses = after["misses"] - before["misses"]
hits = after["hits"] - before["hits"]
status = dict(line.split(":", 1) for line in open("/proc/self/status") if ":" in line)
result = {
    "rank": group.rank(),
    "layers": (after.get("pipeline") or {"layers": [0, len(after["layers"])]})["layers"],
    "capacity": list(after["budget"]["capacity"]),
    "num_experts": [layer["num_experts"] for layer in after["layers"]],
    "budget_bytes": after["budget"]["memory"],
    # The plan: what the process, the non-expert weights (this stage's and the embeddings/head),
    # scratch and the KV cache take from the budget before any expert slot.
    "plan": {k: v for k, v in after["budget"].items() if not isinstance(v, (list, tuple))},
    "expert_bytes_resident": sum(c * e for c, e in zip(after["budget"]["capacity"], after["budget"]["expert_bytes"])),
    "peak_rss_bytes": int(status["VmHWM"].split()[0]) * 1024,
    "ttft_s": first - start,
    "decode_tok_s": decode / (end - first),
    "decode_hits": hits,
    "decode_misses": misses,
    "decode_hit_rate": hits / (hits + misses) if hits + misses else 1.0,
    "decode_bytes_per_token": (after["bytes_read"] - before["bytes_read"]) / decode,
    "tokens": tokens,
}
open(f"{out}/rank{group.rank()}.json", "w").write(json.dumps(result))
session.close()
mx.eval(mx.distributed.all_sum(1, stream=mx.cpu))  # every rank done before any exits
"""


def run(hosts: int, path: Path, args, work: Path) -> list[dict]:
    out = work / f"out{hosts}"
    out.mkdir()
    script = work / "child.py"
    script.write_text(CHILD)
    argv = [sys.executable, str(script), str(out), str(path), args.memory, str(args.prompt),
            str(args.decode), str(args.temperature)]  # fmt: skip
    if hosts == 1:
        subprocess.run(argv, check=True, timeout=args.timeout)
    else:
        from moe_testing._hosts import Hosts

        net_dir = work / f"net{hosts}"
        net_dir.mkdir()
        with Hosts(hosts, net_dir) as net:
            launch = net.launch(argv, timeout=args.timeout)
            if launch.wait() != 0 or "exited with code" in launch.output():
                raise RuntimeError(launch.output())
    return [json.loads((out / f"rank{r}.json").read_text()) for r in range(hosts)]


def measure(hosts: int, path: Path, args, work: Path) -> dict:
    os.sync()
    ranks = run(hosts, path, args, work)
    tokens = ranks[0].pop("tokens")
    same = all(r.pop("tokens") == tokens for r in ranks[1:])
    experts = sum(n for r in ranks for n in r["num_experts"])
    resident = sum(c for r in ranks for c in r["capacity"])
    return {
        "ranks": ranks,
        "tokens": tokens,
        "every_rank_sampled_the_same_tokens": same,
        "experts_resident_share": resident / experts,
        "max_peak_rss_per_host_bytes": max(r["peak_rss_bytes"] for r in ranks),
        "max_expert_bytes_resident_per_host": max(r["expert_bytes_resident"] for r in ranks),
        "decode_hit_rate": sum(r["decode_hits"] for r in ranks)
        / sum(r["decode_hits"] + r["decode_misses"] for r in ranks),
        # Expert bytes read by all hosts together per decoded token (each host reads its own).
        "decode_bytes_per_token": sum(r["decode_bytes_per_token"] for r in ranks),
        "max_decode_bytes_per_token_per_host": max(r["decode_bytes_per_token"] for r in ranks),
        "decode_tok_s": ranks[0]["decode_tok_s"],
        "ttft_s": ranks[0]["ttft_s"],
        "load_average": os.getloadavg(),
        "date": time.strftime("%Y-%m-%d %H:%M"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", type=Path, help="written after each host count; the host "
                        "counts it already holds at the same settings are kept")  # fmt: skip
    parser.add_argument("--memory", default="400MB", help="the budget of every host")
    parser.add_argument("--hosts", default="1,2,4")
    parser.add_argument("--prompt", type=int, default=16)
    parser.add_argument("--decode", type=int, default=16)
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--timeout", type=float, default=1800, help="seconds per launch")
    args = parser.parse_args()
    import mlx.core as mx
    import mlx_lm

    from moe_testing import CheckpointSpec, build_checkpoint
    from moe_testing._hosts import unavailable

    if (reason := unavailable()) is not None:
        sys.exit(f"needs network namespaces: {reason}")
    # Routing as flat as a random router's (skew 0): with a skewed one this random-weight model's
    # decode hit 97% of its lookups at a quarter of the experts, and capacity would show little.
    spec = CheckpointSpec("qwen3_moe", precision="q4", skew=0.0, num_layers=8, hidden_size=512,
                          moe_intermediate_size=1024, num_experts=64, top_k=8)  # fmt: skip
    settings = {"checkpoint": repr(spec), "memory_per_host": args.memory, "prompt": args.prompt,
                "decode": args.decode, "temperature": args.temperature}  # fmt: skip
    results = {}
    if args.json and args.json.exists():
        old = json.loads(args.json.read_text())
        if all(old.get(k) == v for k, v in settings.items()):
            results = old["results"]
    with tempfile.TemporaryDirectory(prefix="multihost-") as tmp:
        work = Path(tmp)
        path = build_checkpoint(spec, work)
        for hosts in map(int, args.hosts.split(",")):
            results[str(hosts)] = measure(hosts, path, args, work)
            summary = {k: v for k, v in results[str(hosts)].items() if k not in ("ranks", "tokens")}
            print(f"{hosts} host(s): {json.dumps(summary)}", flush=True)
            results = dict(sorted(results.items(), key=lambda kv: int(kv[0])))
            first = next(iter(results.values()))["tokens"]
            report = {
                "machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                            "ram_bytes": os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"),
                            "mlx": mx.__version__, "mlx_lm": mlx_lm.__version__,
                            "note": "every host is a network namespace on this one machine: "
                                    "the hosts share its 2 cores (with other work), disk and "
                                    "page cache"},
                **settings,
                "command": " ".join(["python benchmarks/multihost.py", *sys.argv[1:]]),
                "tokens_identical": all(r["tokens"] == first for r in results.values()),
                "results": results,
            }  # fmt: skip
            if args.json:  # whole or not at all
                partial = args.json.with_suffix(".partial")
                partial.write_text(json.dumps(report, indent=2) + "\n")
                partial.replace(args.json)
    print(f"tokens identical on every host count: {report['tokens_identical']}")


if __name__ == "__main__":
    main()
