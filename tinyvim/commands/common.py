"""Options and helpers shared by several commands (the CLI only parses and prints)."""
from __future__ import annotations

import click

from tinyvim.contract import parse_size


def img_size_option(**kwargs):
    """`--img-size H [W]`: click cannot take 1-or-2 values, so accept a string like 224 or 224,256."""
    def callback(ctx, param, value):
        return None if value is None else parse_size(value)
    return click.option("--img-size", default=None, callback=callback, metavar="H[,W]",
                        help="Input size, e.g. 224 or 224,256 (multiples of 32). Default 224.", **kwargs)


variant_option = click.option("--variant", "-v", type=click.Choice(["s", "b", "l"], case_sensitive=False),
                              default="s", show_default=True, help="TinyViM variant.")
checkpoint_option = click.option("--checkpoint", "-c", type=click.Path(dir_okay=False), default=None,
                                 help="Official-format checkpoint (.pth). Default: random weights (seeded).")
ema_option = click.option("--ema", is_flag=True, help="Use the checkpoint's model_ema weights.")
backbone_option = click.option("--backbone", is_flag=True,
                               help="The detection/segmentation trunk (4 feature maps) instead of the classifier.")


def announce_weights(checkpoint, seed: int = 0) -> None:
    if checkpoint is None:
        click.secho(f"note: no --checkpoint given: using randomly initialised weights (seed {seed}); "
                    "outputs are meaningless, numerics and speed are real", fg="yellow", err=True)
