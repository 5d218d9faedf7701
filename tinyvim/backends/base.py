"""The runner interface every backend implements (Polygraphy style).

A runner is built cheaply, loads its model in `activate()`, runs `infer(feed)` any number of
times and frees everything in `deactivate()`; `with runner:` does both. Feeds and results are
dicts of named numpy arrays, so comparison and profiling are written once for all backends.
"""
from __future__ import annotations

import abc
import time
from collections.abc import Callable, Mapping


from tinyvim.errors import TinyvimError, error_reason  # noqa: F401  (re-exported for runners)
from tinyvim.lazy import lazy_import

np = lazy_import("numpy")

#: Signature of a timing hook: (runner, timings) where timings maps a phase name
#: ("total", and for TensorRT also "h2d", "compute", "d2h") to seconds.
TimingHook = Callable[["BaseRunner", dict], None]


class BaseRunner(abc.ABC):
    """activate / infer / deactivate, named inputs and outputs, and per-call timings."""

    #: what the runner computes in where that differs from its file's precision (OpenVINO's
    #: bf16/f16 hints): validate judges by the loosest; None: as the file says
    compute_precision: str | None = None
    #: the execution providers, for runners that have them (ONNX Runtime)
    providers: list[str] | None = None

    def __init__(self, name: str):
        self.name = name
        self.is_active = False
        self._timings: dict[str, float] = {}
        self._hooks: list[TimingHook] = []
        self._inputs: list[str] = []     # filled by activate_impl
        self._outputs: list[str] = []

    # ------------------------------------------------------------------ lifecycle
    def activate(self) -> BaseRunner:
        if not self.is_active:
            self.activate_impl()
            self.is_active = True
        return self

    def deactivate(self) -> None:
        if self.is_active:
            try:
                self.deactivate_impl()
            finally:
                self.is_active = False

    def __enter__(self) -> BaseRunner:
        return self.activate()

    def __exit__(self, *exc) -> None:
        self.deactivate()

    # ------------------------------------------------------------------ what subclasses provide
    @abc.abstractmethod
    def activate_impl(self) -> None:
        """Load the model / session / engine."""

    @abc.abstractmethod
    def deactivate_impl(self) -> None:
        """Release what activate_impl acquired."""

    @property
    def input_names(self) -> list[str]:
        """Names of the model inputs (valid after activate)."""
        return list(self._inputs)

    @property
    def output_names(self) -> list[str]:
        """Names of the model outputs, in the model's order (valid after activate)."""
        return list(self._outputs)

    @abc.abstractmethod
    def infer_impl(self, feed: Mapping[str, np.ndarray]) -> tuple[dict[str, np.ndarray], dict[str, float]]:
        """Run once; return (outputs, phase timings in seconds, may be empty)."""

    # ------------------------------------------------------------------ public calls
    def infer(self, feed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run the model on `feed` {input name: array (B, 3, H, W)}; returns {output name: array}.

        Timings of this call are available afterwards from `last_timings()`."""
        if not self.is_active:
            raise TinyvimError(f"runner {self.name!r} is not active: call activate() or use `with`")
        missing = [n for n in self.input_names if n not in feed]
        extra = [n for n in feed if n not in self.input_names]
        if missing or extra:
            raise TinyvimError(f"runner {self.name!r} expects inputs {self.input_names}, "
                               f"got {sorted(feed)}")
        start = time.perf_counter()
        outputs, phases = self.infer_impl(feed)
        total = time.perf_counter() - start
        self._timings = {"total": total, **phases}
        for hook in self._hooks:
            hook(self, self._timings)
        return outputs

    def last_inference_time(self) -> float:
        """Seconds of the last `infer` call as the backend measured it (device time for
        TensorRT: compute only; wall clock for CPU backends)."""
        return self._timings.get("compute", self._timings.get("total", float("nan")))

    def last_timings(self) -> dict[str, float]:
        """Phase timings (seconds) of the last `infer` call."""
        return dict(self._timings)

    def add_timing_hook(self, hook: TimingHook) -> None:
        """Call `hook(runner, timings)` after every `infer` (profilers, loggers)."""
        self._hooks.append(hook)
