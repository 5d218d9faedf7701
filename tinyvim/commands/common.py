"""Options and helpers shared by several commands (the CLI only parses and prints)."""
from __future__ import annotations

import functools
import sys

import click

from tinyvim.contract import (
    DEFAULT_IMG_SIZE,
    DEFAULT_VARIANT,
    INPUT_MULTIPLE,
    MAX_BATCH,
    MAX_IMAGE_SIDE,
    VARIANTS,
    InputSpec,
    ModelOverrides,
    ModelSpec,
    parse_size,
)
from tinyvim.errors import TinyvimError

#: how every command spells and documents an image size (contract.parse_size reads it)
SIZE_METAVAR = "N|HxW"
SIZE_HELP = "e.g. 224 or 224x256, multiples of 32 (H,W is accepted too)"


def img_size_option(default: str = f"{DEFAULT_IMG_SIZE[0]}", **kwargs):
    """`--img-size N|HxW`, parsed once, here at the boundary, by contract.parse_size (one syntax
    for every command); the library receives (H, W) or None."""
    def callback(ctx, param, value):
        try:
            return None if value is None else parse_size(value)
        except TinyvimError as exc:     # raised while click parses: one line, exit 2, also outside the group
            raise _ExpectedFailure(str(exc), exc.exit_code) from None
    return click.option("--img-size", default=None, callback=callback, metavar=SIZE_METAVAR,
                        help=f"Input size, {SIZE_HELP} [default: {default}].", **kwargs)


variant_option = click.option("--variant", "-v", type=click.Choice(VARIANTS, case_sensitive=False),
                              default=DEFAULT_VARIANT, show_default=True, help="TinyViM variant.")
checkpoint_option = click.option("--checkpoint", "-c", type=click.Path(dir_okay=False), default=None,
                                 help="Official-format checkpoint (.pth). Default: random weights (seeded).")
ema_option = click.option("--ema", is_flag=True, help="Use the checkpoint's model_ema weights.")
backbone_option = click.option("--backbone", is_flag=True,
                               help="The detection/segmentation trunk (4 feature maps) instead of the classifier.")
allow_nonfinite_option = click.option("--allow-nonfinite", is_flag=True,
                                      help="Load a checkpoint whose weights hold NaN/Inf (refused by default).")
json_option = click.option("--json", "json_path", type=click.Path(dir_okay=False), default=None,
                           help="Also write the report as JSON.")


def _grouped(options: list, build):
    """A decorator adding `options` to a command and replacing their values by one argument,
    built by `build(values) -> (name, value)` when the command runs: the value types are made
    once, here at the boundary, and a bad combination is one `error:` line."""
    # each click.option decorator, applied to a throwaway function, tells the name it passes
    names = [opt(lambda: None).__click_params__[0].name for opt in options]

    def decorate(fn):
        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            values = {name: kwargs.pop(name) for name in names}
            try:
                name, value = build(values)
            except TinyvimError as exc:
                raise _ExpectedFailure(str(exc), exc.exit_code) from None
            return fn(*args, **{**kwargs, name: value})
        for opt in reversed(options):
            wrapper = opt(wrapper)
        return wrapper
    return decorate


def model_options(*, from_file: bool = False, seed_flag: str = "--seed", ema: bool = True, into: str = "model"):
    """Which model, as one argument (named `into`): `--variant`, `--checkpoint`, `--ema`, `--backbone`,
    the weight seed (`seed_flag`) and `--allow-nonfinite`. from_file=False (export, info): a
    ModelSpec, unset options at their defaults; True (validate, profile): ModelOverrides, unset
    options None = as the model file records."""
    if from_file:
        options = [
            click.option("--variant", type=click.Choice(VARIANTS, case_sensitive=False), default=None,
                         help="Override / fill in the variant recorded in the model."),
            click.option("--checkpoint", type=click.Path(dir_okay=False), default=None,
                         help="Checkpoint of the PyTorch reference [default: the one the model records]."),
            click.option("--ema/--no-ema", default=None, help="Use the checkpoint's EMA weights."),
            click.option("--backbone/--no-backbone", default=None, help="Model is the 4-feature-map backbone."),
            click.option(seed_flag, "weight_seed", type=int, default=None,
                         help="Seed of the reference's random weights (no checkpoint) [default: the model's]."),
        ]
    else:
        options = [variant_option, checkpoint_option, backbone_option,
                   click.option(seed_flag, "weight_seed", type=int, default=0, show_default=True,
                                help="Seed of the random weights (no checkpoint).")]
        if ema:
            options.insert(2, ema_option)
    options.append(allow_nonfinite_option)

    def build(values):
        return into, (ModelOverrides if from_file else ModelSpec)(**values)
    return _grouped(options, build)


def input_options():
    """Which input, as one `inputs` argument (an InputSpec): `--img-size`, `--batch`,
    `--dynamic-batch`, `--dynamic-size` (a dynamic dimension is None in the InputSpec)."""
    options = [
        img_size_option(),
        click.option("--batch", type=int, default=1, show_default=True, help=f"Static batch size (1..{MAX_BATCH})."),
        click.option("--dynamic-batch", is_flag=True, help=f"Make the batch dimension dynamic (1..{MAX_BATCH})."),
        click.option("--dynamic-size", is_flag=True,
                     help=f"Make H and W dynamic: any multiples of {INPUT_MULTIPLE} up to {MAX_IMAGE_SIDE} from one "
                          "file (--img-size is then unused)."),
    ]

    def build(values):
        size = None if values["dynamic_size"] else (values["img_size"] or DEFAULT_IMG_SIZE)
        return "inputs", InputSpec(size, None if values["dynamic_batch"] else values["batch"])
    return _grouped(options, build)


def announce_weights(model: ModelSpec, who: str = "the model") -> None:
    """The note every command prints when it computes with random weights."""
    if model.random_weights:
        click.secho(f"note: no --checkpoint given: {who} uses randomly initialised weights (seed {model.weight_seed}); "
                    "outputs are meaningless, numerics and speed are real", fg="yellow", err=True)


class _ExpectedFailure(click.ClickException):
    """One line 'error: <message>' on stderr (as tinyvim.cli prints it), no traceback, and
    the TinyvimError's exit code - also when a command runs outside the `tinyvim` group."""

    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        self.exit_code = exit_code

    def show(self, file=None) -> None:
        click.secho(f"error: {self.format_message()}", fg="red", err=True)


def one_line_errors(fn):
    """TinyvimError -> one `error:` line and its exit code, also outside the `tinyvim` group."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except TinyvimError as exc:
            raise _ExpectedFailure(str(exc), exc.exit_code) from None
    return wrapper


def echo_err(message: str) -> None:
    click.echo(message, err=True)


def int_list(text: str, what: str) -> list[int]:
    """'1,8,32' -> [1, 8, 32], each >= 1; one-line error otherwise."""
    try:
        values = [int(v) for v in text.replace(" ", "").split(",") if v]
    except ValueError:
        raise TinyvimError(f"{what} must be a comma-separated list of integers, got {text!r}") from None
    if not values or min(values) < 1:
        raise TinyvimError(f"{what} must list integers >= 1, got {text!r}")
    return values


class ProgressBar:
    """One status line on stderr per long phase (evaluate's pictures, quantize's calibration passes),
    redrawn at most every `every` seconds: in place on a terminal, otherwise a line each time (at
    least 10 s apart, so logs stay readable); the first and the last call always draw. `label`
    starts the line; each call may add a `note` (a running top-1, the pass)."""

    def __init__(self, every: float = 0.5, label: str = ""):
        self.tty = sys.stderr.isatty()
        self.every = every if self.tty else max(every, 10.0)
        self.label = label
        self.last = None

    def __call__(self, done: int, total: int, seconds: float, note: str = "") -> None:
        # a new phase restarts its clock: seconds below the last drawn time start the bar afresh
        fresh = self.last is None or seconds < self.last
        if not fresh and seconds - self.last < self.every and done < total:
            return
        self.last = seconds
        rate = done / seconds if seconds > 0 else 0.0
        eta = (total - done) / rate if rate > 0 else 0.0
        width = 24
        filled = int(width * min(done, total) / max(total, 1))
        line = (f"{self.label}[{'#' * filled}{'.' * (width - filled)}] {done}/{total}  {rate:.1f} images/s  "
                + (f"{note}  " if note else "") + f"ETA {eta:.0f} s")
        if self.tty:
            click.echo("\r" + line + ("\n" if done >= total else ""), err=True, nl=False)
        else:
            click.echo(line, err=True)
