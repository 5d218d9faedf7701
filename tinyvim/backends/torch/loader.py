"""Loading the PyTorch model a torch runner runs: TinyViM built from a variant, checkpoint or
seed, optionally re-parameterized (Polygraphy style: a loader is a cheap callable that builds
the thing when the runner activates)."""
from __future__ import annotations

from collections.abc import Callable

from tinyvim.contract import ModelSpec
from tinyvim.lazy import lazy_import

#: the network (torch): imported when a loader runs, not when a backend is declared
models = lazy_import("tinyvim.model")


def tinyvim_loader(spec: ModelSpec, *, fused: bool = False) -> Callable:
    """A zero-argument callable building the TinyViM model `spec` names: the weights are read
    and tinyvim.model (so torch) imported when it is called, not when a runner is described."""

    def load():
        model = models.build_model(spec)
        if fused:
            model = models.reparameterize(model)
        return model.eval()

    return load
