#!/usr/bin/env bash
# Install MLX's CUDA backend on a GPU machine that cannot download anything, from wheels carried in
# parts (one call may carry 64 MiB; the mlx-cuda-13 wheel is ~90 MB). Prepare them where pip works:
#   pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux_2_35_x86_64 -d .whl mlx==0.32.4 mlx-cuda-13==0.32.4 mlx-lm==0.32.2
#   (cd .whl && split -b 30M mlx_cuda_13-*.whl part- && mkdir a b c && mv part-aa a && \
#      mv part-ab b && mv part-ac c && cp mlx-0.32.4-*.whl mlx_lm-*.whl c)
# then make one call per folder, back to back while the machine stays warm, carrying `.whl/a`,
# `.whl/b`, `.whl/c` in turn and running this script first each time. Parts are kept outside the
# repository copy, in /root/keep; once all are there the wheel is joined and installed into
# /tmp/site. Use it with `export PYTHONPATH=/tmp/site`.
set -euo pipefail
parts=${PARTS:-3}
keep=/root/keep
mkdir -p "$keep"
for dir in .whl/*/; do
    if [ -d "$dir" ]; then cp -f "$dir"* "$keep"/; fi
done
if PYTHONPATH=/tmp/site python3 -c "import mlx.core" 2>/dev/null; then
    echo "mlx already installed in /tmp/site"
    exit 0
fi
have=$(ls "$keep"/part-* 2>/dev/null | wc -l)
if [ "$have" -lt "$parts" ]; then
    echo "have $have of $parts parts in $keep; carry the next one"
    exit 0
fi
cat "$keep"/part-* > "$keep/mlx_cuda_13-0.32.4-py3-none-manylinux_2_35_x86_64.whl"
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site "$keep"/*.whl
PYTHONPATH=/tmp/site python3 -c "import mlx.core as mx; print('mlx', mx.__version__, mx.default_device())"
