#!/usr/bin/env bash
# Install MLX's CUDA backend into /tmp/site on a GPU machine that cannot download anything, from
# parts carried over two calls (one call may carry 64 MiB beside the repository; the mlx-cuda-13
# wheel's files are ~75 MB compressed). Make the parts where pip works, in the repository root
# (`.whl/` is ignored by git):
#
#   pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#       --platform manylinux_2_35_x86_64 -d .whl mlx==0.32.4 mlx-cuda-13==0.32.4 mlx-lm==0.32.2
#   pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#       --platform manylinux_2_28_x86_64 -d .whl crc32c==2.9.post0     # moe-core's one extra
#   mkdir -p /tmp/mlxcuda && unzip -q .whl/mlx_cuda_13-*.whl -d /tmp/mlxcuda
#   tar c -C /tmp/mlxcuda . | xz -T0 > /tmp/mlxcuda.tar.xz
#   split -n 2 -d -a 2 /tmp/mlxcuda.tar.xz .whl/mlxcuda.tar.xz.part-
#   mkdir -p .whl/a .whl/b && mv .whl/mlxcuda.tar.xz.part-00 .whl/a/ && \
#       mv .whl/mlxcuda.tar.xz.part-01 .whl/mlx-0.32.4-*.whl .whl/mlx_lm-*.whl .whl/crc32c-*.whl .whl/b/
#
# Then, back to back while the machine stays warm (it is given back ~30 s after a call):
#   call 1, carrying .whl/a:  bash benchmarks/device/install_mlx_cuda.sh
#   call 2, carrying .whl/b:  bash benchmarks/device/install_mlx_cuda.sh && ...
# Parts are kept outside the repository copy (in /root/keep), so the second call finds the first
# call's part. Other wheels in the carried folders (or in folders given as arguments) are
# installed beside MLX. Use it with `export PYTHONPATH=/tmp/site`.
set -euo pipefail
keep=/root/keep
site=/tmp/site
mkdir -p "$keep"
for dir in .whl/*/ "$@"; do
    if [ -d "$dir" ]; then cp -f "$dir"/* "$keep"/ 2>/dev/null || true; fi
done
if PYTHONPATH=$site python3 -c "import mlx.core, crc32c" 2>/dev/null; then
    echo "mlx already installed in $site"
    exit 0
fi
have=$(ls "$keep"/mlxcuda.tar.xz.part-* 2>/dev/null | wc -l)
if [ "$have" -lt 2 ]; then
    echo "have $have of 2 parts in $keep; carry the next one"
    exit 0
fi
rm -rf "$site"
mkdir -p "$site"
python3 -m pip install -q --no-index --no-deps --no-compile --target "$site" "$keep"/*.whl
cat "$keep"/mlxcuda.tar.xz.part-* | xz -d -T0 | tar x -C "$site"
PYTHONPATH=$site python3 -c "import mlx.core as mx; print('mlx', mx.__version__, mx.default_device())"
