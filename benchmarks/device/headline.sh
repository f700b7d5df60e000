#!/usr/bin/env bash
# The headline run on the GPU machine, from a clean clone. One call may run 10 minutes and the run
# takes longer, so `start` launches it in its own process session (it outlives the call) and
# `poll` waits, prints the log's tail and copies what is done to $OUT. Calls back to back:
#   bash benchmarks/device/install_mlx_cuda.sh        # carrying .whl/a, .whl/b, .whl/c in turn
#   bash benchmarks/device/headline.sh start
#   bash benchmarks/device/headline.sh poll 500       # again until the log says "all done"
#   bash benchmarks/device/headline.sh tests          # or only moe-core's tests on CUDA
#   bash benchmarks/device/headline.sh moe            # or only build and moe at 16 GB (~5 min)
# Steps, each logged to /root/keep/run.log: the headline (builds the 48-layer checkpoint on the
# device's disk, measures the disk, moe at a 16 GB budget, the unmodified model resident), moe at
# the same capacity with MLX's limits left unset, moe with every expert resident and the decode
# profiled, and moe-core's tests on the CUDA backend.
set -uo pipefail
keep=/root/keep
mkdir -p "$keep"
export PYTHONPATH=/tmp/site:$PWD/packages/moe-core/src:$PWD/packages/moe-testing/src
export PYTHONUNBUFFERED=1
case "${1:-}" in
start)
    setsid nohup bash "$0" job >"$keep/run.log" 2>&1 </dev/null &
    sleep 5
    cat "$keep/run.log"
    ;;
job)
    ckpt=/root/ckpt
    python3 benchmarks/headline.py all --dir "$ckpt" --memory 16GB --prompt 512 --decode 32 \
        --json "$keep/headline.json"
    echo "== the budget's capacity with MLX's limits left at their defaults"
    python3 benchmarks/headline.py run --dir "$ckpt" --memory 16GB --no-mlx-limits --prompt 512 \
        --decode 32 >"$keep/nolimits.out" 2>&1
    grep '^RESULT ' "$keep/nolimits.out" | cut -c8- >"$keep/nolimits.json"
    tail -3 "$keep/nolimits.out" | cut -c1-1500
    echo "== every expert resident, decode profiled"
    python3 benchmarks/headline.py run --dir "$ckpt" --capacity 512 --prompt 512 --decode 32 \
        --profile >"$keep/resident.out" 2>&1
    grep '^RESULT ' "$keep/resident.out" | cut -c8- >"$keep/resident.json"
    tail -3 "$keep/resident.out" | cut -c1-3000
    echo "== exactness tests on CUDA"
    python3 -m pytest -p moe_testing.plugin --import-mode=importlib -q --no-header -rf \
        --tb=line -o addopts="" packages/moe-core/tests >"$keep/pytest.log" 2>&1
    tail -40 "$keep/pytest.log"
    echo "all done"
    ;;
tests)
    # moe-core's tests alone on the CUDA backend, in the foreground (a few minutes).
    python3 -m pytest -p moe_testing.plugin --import-mode=importlib -q --no-header -rf \
        --tb=short -o addopts="" packages/moe-core/tests 2>&1 | tee "${OUT:-/tmp}/pytest.log"
    ;;
moe)
    # Build the checkpoint, measure the disk and run moe at 16 GB, in the foreground.
    python3 benchmarks/headline.py all --dir /root/ckpt --memory 16GB --prompt 512 --decode 32 \
        --skip-reference --json "${OUT:-/tmp}/headline-moe.json"
    ;;
poll)
    end=$((SECONDS + ${2:-500}))
    while [ $SECONDS -lt "$end" ] && ! grep -q "all done" "$keep/run.log"; do sleep 10; done
    tail -60 "$keep/run.log"
    nvidia-smi --query-gpu=memory.used --format=csv
    cp "$keep"/*.json "$keep"/*.log "${OUT:-/tmp}"/ 2>/dev/null
    ;;
*)
    echo "usage: $0 start | poll [seconds] | tests | moe" >&2
    exit 2
    ;;
esac
