"""The timing loop every comparison shares: the things compared take turns, one call of each per
round (a, b, c, a, b, c, ...), so a load that comes and goes hits all of them alike.

Timed one after another, a comparison measures the machine as much as the code: a neighbour's job
starting halfway through slows whichever backend happens to be running then, and the ratio between
two backends is wrong by however busy the machine was. In turns, a slow patch falls on every
backend's samples alike (it still shows, as spread: tinyvim.tools.noise reports it).

Used by `tinyvim profile`, `tinyvim benchmark`, `quantize --max-drop`'s latency line and bench/.

    times = interleave({"torch": wall_clock(lambda: model(x)), "ort": wall_clock(lambda: sess.run(None, feed))},
                       warmup=3, iters=20)         # {"torch": [seconds, ...], "ort": [...]}
"""
from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import TypeVar

Sample = TypeVar("Sample")
#: rounds a --duration run takes at least, however slow a call is: a spread needs a few repeats
MIN_ROUNDS = 3


def interleave(calls: Mapping[str, Callable[[], Sample | None]], *, warmup: int = 0, iters: int | None = None,
               duration: float | None = None, on_round: Callable[[int], None] | None = None) -> dict[str, list[Sample]]:
    """Call each of `calls` once per round, in the mapping's order. First `warmup` rounds whose
    results are dropped (so every call has warmed up - caches, lazy allocations, JIT - before
    any is timed), then `iters` timed rounds, or rounds until `duration` seconds of timed rounds
    have passed (at least MIN_ROUNDS).

    Each call does one unit of work and returns its sample: what it measured (seconds by the wall
    clock, see wall_clock; a backend's own timings), or None for nothing to record (a row that
    has failed). Returns {name: [sample of each timed round]}, in the order taken.
    `on_round(k)` is called after timed round k (1-based), e.g. for progress."""
    if (iters is None) == (duration is None):
        raise ValueError("give iters or duration, not both")
    for _ in range(warmup):
        for call in calls.values():
            call()
    samples: dict[str, list[Sample]] = {name: [] for name in calls}
    deadline = None if duration is None else time.perf_counter() + duration
    done = 0
    while True:
        for name, call in calls.items():
            sample = call()
            if sample is not None:
                samples[name].append(sample)
        done += 1
        if on_round is not None:
            on_round(done)
        if deadline is None:
            if done >= iters:
                return samples
        elif done >= MIN_ROUNDS and time.perf_counter() >= deadline:
            return samples


def wall_clock(fn: Callable[[], object]) -> Callable[[], float]:
    """`fn` as a call for interleave: runs it and returns the seconds it took (perf_counter)."""
    def timed() -> float:
        start = time.perf_counter()
        fn()
        return time.perf_counter() - start
    return timed
