"""The registered backends' own options as click options, shared by validate, profile and evaluate
(a separate module: importing the registry is more than the other commands need)."""
from __future__ import annotations

import click

from tinyvim.backends.registry import all_options


def backend_options(fn):
    """Every registered backend's own options as click options (tinyvim.backends.registry):
    a new backend's options appear on validate, profile and evaluate without touching them."""
    for opt in reversed(all_options()):
        if opt.type is bool:
            decl = click.option(f"{opt.flag}/--no-{opt.flag[2:]}", opt.name, default=None, help=opt.help)
        else:
            kind = (click.Choice(opt.choices, case_sensitive=False) if opt.choices else
                    click.Path(dir_okay=False) if opt.path else opt.type)
            decl = click.option(opt.flag, opt.name, type=kind, default=None, help=opt.help)
        fn = decl(fn)
    return fn


def pop_backend_options(kwargs: dict) -> dict:
    """The backend options out of a command's keyword arguments, {name: value or None}."""
    return {opt.name: kwargs.pop(opt.name) for opt in all_options()}
