"""The `tinyvim` command: a thin layer over the Python API. Expected failures
(TinyvimError) print one line and exit non-zero; nothing else is caught."""
from __future__ import annotations

import importlib
import sys

import click

from tinyvim import __version__
from tinyvim.errors import TinyvimError

# (module, attribute) of each command; imported lazily so `tinyvim --help` stays fast
# and a missing optional dependency of one command cannot break the others.
COMMANDS = {
    "info": ("tinyvim.commands.info", "info"),
    "export": ("tinyvim.commands.export", "export"),
    "validate": ("tinyvim.commands.engines", "validate"),
    "profile": ("tinyvim.commands.engines", "profile"),
    "build-engine": ("tinyvim.commands.engines", "build_engine"),
    "build-plugin": ("tinyvim.commands.plugins", "build_plugin"),
    "serve": ("tinyvim.commands.serve", "serve"),
    "serve-bench": ("tinyvim.commands.serve", "serve_bench"),
}


class TinyvimGroup(click.Group):
    def list_commands(self, ctx):
        return sorted(COMMANDS)

    def get_command(self, ctx, name):
        if name not in COMMANDS:
            return None
        module, attr = COMMANDS[name]
        return getattr(importlib.import_module(module), attr)

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except TinyvimError as exc:
            click.secho(f"error: {exc}", fg="red", err=True)
            ctx.exit(exc.exit_code)
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            ctx.exit(130)


@click.group(cls=TinyvimGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="tinyvim")
def cli():
    """TinyViM from a PyTorch checkpoint to a fast, verified inference engine."""


def main(argv: list[str] | None = None) -> None:
    cli.main(args=argv, prog_name="tinyvim")


if __name__ == "__main__":
    main(sys.argv[1:])
