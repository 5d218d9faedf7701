"""The `tinyvim` command: a thin layer over the Python API.

Every expected failure ends in exactly one line on stderr, `error: <what and how to fix it>`,
and exit code 2 (TinyvimError; click's own usage errors too - a bad option value, a missing
argument, an unknown option); 1 is kept for "a check failed" (validate out of tolerance).
Nothing else is caught: an unexpected exception is a bug and shows its traceback."""
from __future__ import annotations

import difflib
import importlib
import sys

import click

from tinyvim import __version__
from tinyvim.errors import TinyvimError

# (module, attribute) of each command, imported when that command runs (or shows its help):
# `tinyvim --help` lists them from SUMMARIES without importing any, so it stays fast, and a
# broken optional dependency of one command cannot break the others.
COMMANDS = {
    "info": ("tinyvim.commands.info", "info"),
    "export": ("tinyvim.commands.export", "export"),
    "validate": ("tinyvim.commands.engines", "validate"),
    "evaluate": ("tinyvim.commands.evaluate", "evaluate"),
    "benchmark": ("tinyvim.commands.benchmark", "benchmark"),
    "profile": ("tinyvim.commands.engines", "profile"),
    "build-engine": ("tinyvim.commands.engines", "build_engine"),
    "build-plugin": ("tinyvim.commands.plugins", "build_plugin"),
    "quantize": ("tinyvim.commands.quantize", "quantize"),
    "serve": ("tinyvim.commands.serve", "serve"),
    "serve-bench": ("tinyvim.commands.serve", "serve_bench"),
}
#: the first words of each command's docstring (tests/test_structure.py holds them equal)
SUMMARIES = {
    "info": "Parameters, GMACs and the SS2D blocks of a TinyViM variant.",
    "export": "Export TinyViM (always re-parameterized) to ONNX, OpenVINO IR, a Triton model repository, or a "
              "PyTorch 2 / mobile format (pt2, aoti, torchscript, executorch, ort).",
    "validate": "Check an exported MODEL (.onnx, .xml or .engine) against the PyTorch reference.",
    "evaluate": "Top-1/top-5 of MODEL on labelled pictures, beside the PyTorch reference's on the same pictures.",
    "benchmark": "One table of every format x precision x backend that runs here: size, time to make, top-1 and",
    "profile": "Measure latency and throughput of TinyViM on several backends and batch sizes.",
    "build-engine": "Build a TensorRT engine (and its JSON sidecar) from a TinyViM ONNX MODEL.",
    "build-plugin": "Build the CUDA scan kernel, its CPU twin and the TensorRT plugin with CMake.",
    "serve": "Serve a model REPO (from `export --fmt triton`) with Triton Inference Server",
    "serve-bench": "Load-test a model served by Triton: latency percentiles and images/s per concurrency",
    "quantize": "Quantize an fp32 TinyViM ONNX into an explicit Q/DQ ONNX",
}


def one_line(message: str) -> str:
    """Click messages may span lines (choices, hints): one line, whitespace collapsed."""
    return " ".join(str(message).split())


def usage_error_line(exc: click.UsageError) -> str:
    """'error: <click's message> (see `tinyvim CMD --help`)' - click's own four-line
    Usage/Try/Error block, said in one line like every other error."""
    command = exc.ctx.command_path if exc.ctx is not None else "tinyvim"
    message = one_line(exc.format_message())
    return f"error: {message[:1].lower() + message[1:]} (see `{command} --help`)"


class TinyvimGroup(click.Group):
    def list_commands(self, ctx):
        return sorted(COMMANDS)

    def format_commands(self, ctx, formatter):
        """The command list from SUMMARIES: importing every command (and torch) to print it
        would make `tinyvim --help` take seconds."""
        with formatter.section("Commands"):
            formatter.write_dl([(name, SUMMARIES[name]) for name in self.list_commands(ctx)])

    def get_command(self, ctx, name):
        if name not in COMMANDS:
            return None
        module, attr = COMMANDS[name]
        return getattr(importlib.import_module(module), attr)

    def resolve_command(self, ctx, args):
        """click's lookup, plus the nearest command for a typo (`tinyvim exprot`)."""
        name = args[0] if args else ""
        if name and name not in COMMANDS and not name.startswith("-"):
            close = difflib.get_close_matches(name, list(COMMANDS), n=1, cutoff=0.6)
            if close:
                ctx.fail(f"No such command {name!r}: did you mean {close[0]!r}?")
        return super().resolve_command(ctx, args)

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except TinyvimError as exc:
            click.secho(f"error: {one_line(str(exc))}", fg="red", err=True)
            ctx.exit(exc.exit_code)
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            ctx.exit(130)

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        """click's main, with its error reporting replaced by one `error:` line."""
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        try:
            code = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except click.UsageError as exc:
            click.secho(usage_error_line(exc), fg="red", err=True)
            code = exc.exit_code
        except click.ClickException as exc:
            click.secho(f"error: {one_line(exc.format_message())}", fg="red", err=True)
            code = exc.exit_code
        except click.Abort:
            click.echo("interrupted", err=True)
            code = 130
        sys.exit(code if isinstance(code, int) else 0)


@click.group(cls=TinyvimGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="tinyvim")
def cli():
    """TinyViM from a PyTorch checkpoint to a fast, verified inference engine."""


def main(argv: list[str] | None = None) -> None:
    cli.main(args=argv, prog_name="tinyvim")


if __name__ == "__main__":
    main(sys.argv[1:])
