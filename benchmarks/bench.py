"""The end-to-end benchmark: the same code as `moe bench` (see benchmarks/README.md).

python benchmarks/bench.py --layers 6 --json benchmarks/results/bench-6l.json
"""

from moe_cli.bench import bench

if __name__ == "__main__":
    import typer

    typer.run(bench)
