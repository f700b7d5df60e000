#!/usr/bin/env bash
# benchmarks/speed_gpu.py on the GPU machine, within one device call (10 minutes), after
# benchmarks/device/install_mlx_cuda.sh. Usage: bash benchmarks/device/speed.sh [SECONDS [TESTS]]
# Results land in $OUT (raw.json, speed-gpu.json, tiers-gpu.json, the log); copy the JSON files
# to benchmarks/results/. A run cut short keeps what it measured, and a later call on the same
# machine (still warm) resumes it: the checkpoint, the kernel caches and raw.json stay in /root.
# `speed_gpu.py report raw.json` computes the targets again.
set -uo pipefail
export PYTHONPATH=/tmp/site:$PWD/packages/moe-core/src:$PWD/packages/moe-testing/src
export PYTHONUNBUFFERED=1
out=${OUT:-/tmp/speed-out}
keep=/root/speed
mkdir -p "$out" "$keep"
budget=${1:-500}
tests=${2:-0}
cp -f "$keep/raw.json" "$out/raw.json" 2>/dev/null && echo "resuming $keep/raw.json"
{
    echo "== $(date -u) cgroup: $(cat /proc/self/cgroup | tr '\n' ' ')"
    echo "controllers: $(cat /sys/fs/cgroup/cgroup.controllers 2>/dev/null) subtree: $(cat /sys/fs/cgroup/cgroup.subtree_control 2>/dev/null)"
    df -h /root /dev/shm | tail -2
    nvidia-smi --query-gpu=name,memory.used,memory.total --format=csv,noheader
} 2>&1 | tee -a "$out/speed.log"
timeout "$budget" python3 benchmarks/speed_gpu.py all --dir /root/moe-ckpt --layers 12 \
    --capacity 128 --out "$out" --results "$out" --work "$keep/kernels" \
    --until $((budget - 25)) --tests "$tests" 2>&1 | tee -a "$out/speed.log"
cp -f "$out/raw.json" "$keep/raw.json"
python3 benchmarks/speed_gpu.py report "$out/raw.json" --results "$out" 2>&1 | tail -30
