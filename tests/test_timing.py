"""The shared timing loop (tinyvim.tools.timing): calls take turns, warm-ups come before any timed
round, --duration counts rounds on the clock, and a call with nothing to record is left out."""
from __future__ import annotations

import pytest

from tinyvim.tools import timing


def _recording(order: list[str], name: str):
    """A call that logs its name and returns how many times it has been called."""
    count = [0]

    def call():
        order.append(name)
        count[0] += 1
        return count[0]
    return call


def test_calls_take_turns_after_every_warm_up():
    order: list[str] = []
    samples = timing.interleave({n: _recording(order, n) for n in "abc"}, warmup=2, iters=3)
    # sequential timing would give aaaaa bbbbb ccccc; a warm-up inside the timed rounds, a b c a b c a a ...
    assert "".join(order) == "abc" * 2 + "abc" * 3
    assert samples == {n: [3, 4, 5] for n in "abc"}      # the warm-up calls (1, 2) are not samples


def test_duration_counts_rounds_on_the_clock(monkeypatch):
    clock = [0.0]

    def call():
        clock[0] += 1.0         # every call takes one second on the fake clock
        return 1.0
    monkeypatch.setattr(timing.time, "perf_counter", lambda: clock[0])
    # rounds of 2 s: after round 3 six seconds have passed, over the 5 asked
    assert timing.interleave({"a": call, "b": call}, warmup=1, duration=5.0)["a"] == [1.0] * 3
    clock[0] = 0.0
    # a duration shorter than one call still gives MIN_ROUNDS repeats (a spread needs a few)
    assert len(timing.interleave({"a": call}, duration=0.1)["a"]) == timing.MIN_ROUNDS


def test_none_is_no_sample_and_the_others_go_on():
    failed_after = iter([0.1, None, None])
    samples = timing.interleave({"fails": lambda: next(failed_after), "ok": lambda: 0.2}, iters=3)
    assert samples == {"fails": [0.1], "ok": [0.2, 0.2, 0.2]}


def test_iters_or_duration():
    with pytest.raises(ValueError, match="iters or duration"):
        timing.interleave({"a": lambda: 1.0})
    with pytest.raises(ValueError, match="iters or duration"):
        timing.interleave({"a": lambda: 1.0}, iters=2, duration=1.0)


def test_wall_clock_measures_the_call(monkeypatch):
    clock = iter([10.0, 10.25])
    monkeypatch.setattr(timing.time, "perf_counter", lambda: next(clock))
    ran = []
    assert timing.wall_clock(lambda: ran.append(1))() == 0.25 and ran == [1]
