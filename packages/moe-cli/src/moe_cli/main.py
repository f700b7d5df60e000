"""The `moe` command. Each command lives in its own module and imports MLX and the runtime inside
its body, so `moe --help` answers at once."""

from __future__ import annotations

import typer

from . import bench, chat, generate, inspect, pack, profile, serve, verify

app = typer.Typer(
    name="moe",
    help="Run Mixture-of-Experts models larger than memory: experts are read from disk on demand.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.callback()
def main() -> None:
    """Run Mixture-of-Experts models larger than memory: experts are read from disk on demand."""


app.command("serve")(serve.serve)
app.command("generate")(generate.generate)
app.command("chat")(chat.chat)
app.add_typer(profile.app, name="profile")
app.command("inspect")(inspect.inspect)
app.command("bench")(bench.bench)
app.command("pack")(pack.pack)
app.command("verify")(verify.verify)

if __name__ == "__main__":
    app()
