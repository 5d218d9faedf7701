"""Loading the PyTorch model a torch runner runs: TinyViM built from a variant, checkpoint or
seed, optionally re-parameterized (Polygraphy style: a loader is a cheap callable that builds
the thing when the runner activates)."""
from __future__ import annotations

from typing import Callable

from tinyvim.lazy import lazy_import

#: the network (torch): imported when a loader runs, not when a backend is declared
models = lazy_import("tinyvim.model")


def tinyvim_loader(variant: str, *, checkpoint: str | None = None, ema: bool = False,
                   backbone: bool = False, seed: int = 0, fused: bool = False,
                   allow_nonfinite: bool = False) -> Callable:
    """A zero-argument callable building the TinyViM model (lazy, so that a runner can be
    described before the model package is imported or the weights are read)."""

    def load():
        model = models.create_model(variant, checkpoint=checkpoint, backbone=backbone, ema=ema, seed=seed,
                             allow_nonfinite=allow_nonfinite)
        if fused:
            model = models.reparameterize(model)
        return model.eval()

    return load
