"""Is this machine quiet enough for its timings to be believed? One measurement for every tool
that times something (`profile`, bench/cpu_ceiling.py, the benchmark table): the spread of
repeated calls, the load average (other runnable processes), CPU steal (a hypervisor giving our
vCPU to someone else, from /proc/stat) and thermal throttling where the kernel shows it
(/sys/devices/system/cpu/cpu*/thermal_throttle).

Under load a figure is not slightly off, it is wrong: `profile` once reported torch batch 1 at
3578 ms mean (p99 10.4 s) where a quiet run gives 63-108 ms, and a ceiling estimate from that
run concluded the opposite of a quiet one. So a report says what the conditions were and,
when one of them is outside the limits below, that its figures are not to be trusted.

    with NoiseMonitor(threads=2) as monitor:
        times = ...                                   # the timed work
    report = monitor.report({"torch b1": relative_spread(times)})   # -> NoiseReport(trustworthy, reasons)
"""
from __future__ import annotations

import glob
import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field

from tinyvim.lazy import lazy_import

np = lazy_import("numpy")

#: relative spread (p90 - p10) / p50 of repeated calls above which a series is noise, not a figure
#: (a quiet 2-core run of TinyViM-S stays under ~10 %; the loaded run above had ~300 %)
MAX_SPREAD = 0.25
#: other runnable processes (load average minus our own threads) tolerated per core
MAX_OTHER_LOAD_PER_CORE = 0.25
#: share of CPU time stolen by the hypervisor during the run
MAX_STEAL = 0.02

_PROC_STAT = "/proc/stat"
_THROTTLE_GLOB = "/sys/devices/system/cpu/cpu*/thermal_throttle/*_throttle_count"


@dataclass
class NoiseReport:
    """The conditions a set of timings was taken under, and whether they can be trusted."""
    load_average: float | None             # 1-minute load average at the end of the run
    cores: int
    threads: int                            # threads the timed work itself used
    steal: float | None                     # fraction of CPU time stolen during the run (None: not visible)
    throttle_events: int | None             # thermal throttle events during the run (None: not visible)
    spread: dict[str, float] = field(default_factory=dict)   # series -> (p90 - p10) / p50
    reasons: list[str] = field(default_factory=list)

    @property
    def trustworthy(self) -> bool:
        return not self.reasons

    def to_dict(self) -> dict:
        return {**asdict(self), "trustworthy": self.trustworthy, "verdict": self.verdict()}

    def conditions(self) -> str:
        """'load average 0.4 on 2 cores, steal 0.0 %, no throttling, spread of repeats <= 6 %'."""
        parts = [f"load average {self.load_average:.1f} on {self.cores} cores" if self.load_average is not None
                 else f"load average unknown, {self.cores} cores"]
        parts.append(f"steal {self.steal:.1%}" if self.steal is not None else "steal not visible")
        parts.append("throttling not visible" if self.throttle_events is None else
                     "no throttling" if not self.throttle_events else f"{self.throttle_events} throttle events")
        if self.spread:
            parts.append(f"spread of repeats <= {max(self.spread.values()):.0%}")
        return ", ".join(parts)

    def verdict(self) -> str:
        """One line for a screen or a report."""
        if self.trustworthy:
            return f"timing conditions: {self.conditions()}"
        return (f"warning: these timings are not trustworthy ({'; '.join(self.reasons)}): rerun on a quiet "
                f"machine ({self.conditions()})")


def relative_spread(times: Sequence[float]) -> float:
    """(p90 - p10) / p50 of repeated timings: robust to one outlier, large when the machine is busy."""
    t = np.asarray(times, dtype=np.float64)
    if t.size < 2:
        return 0.0
    p10, p50, p90 = np.percentile(t, [10, 50, 90])
    return float((p90 - p10) / p50) if p50 > 0 else float("inf")


def cpu_times(text: str) -> tuple[int, int] | None:
    """(total, steal) jiffies from the aggregate `cpu` line of /proc/stat text (None if absent).
    Fields: user nice system idle iowait irq softirq steal [guest guest_nice] - guest time is
    already inside user/nice, so it is not added again."""
    for line in text.splitlines():
        fields = line.split()
        if fields and fields[0] == "cpu":
            values = [int(v) for v in fields[1:9]]
            return sum(values), (values[7] if len(values) > 7 else 0)
    return None


def steal_fraction(before: tuple[int, int] | None, after: tuple[int, int] | None) -> float | None:
    if before is None or after is None or after[0] <= before[0]:
        return None
    return (after[1] - before[1]) / (after[0] - before[0])


def _read(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return None


def throttle_count(pattern: str = _THROTTLE_GLOB) -> int | None:
    """Sum of the kernel's thermal throttle counters (None where the kernel shows none: VMs, non-x86)."""
    total, seen = 0, False
    for path in glob.glob(pattern):
        text = _read(path)
        if text is not None and text.strip().isdigit():
            total, seen = total + int(text), True
    return total if seen else None


def assess(spread: Mapping[str, float], *, load_average: float | None, cores: int, threads: int,
           steal: float | None, throttle_events: int | None) -> NoiseReport:
    """The report for these conditions: each limit exceeded becomes a reason."""
    reasons = []
    if load_average is not None:
        other = load_average - threads
        if other > max(0.5, MAX_OTHER_LOAD_PER_CORE * cores):
            reasons.append(f"load average {load_average:.1f} on {cores} cores: about {other:.1f} other runnable "
                           "processes shared the CPU")
    if steal is not None and steal > MAX_STEAL:
        reasons.append(f"{steal:.1%} of CPU time stolen by the hypervisor")
    if throttle_events:
        reasons.append(f"the CPU was thermally throttled {throttle_events} times")
    noisy = {k: v for k, v in spread.items() if v > MAX_SPREAD}
    if noisy:
        worst = max(noisy, key=noisy.get)
        reasons.append(f"repeats spread by up to {noisy[worst]:.0%} ({worst}; "
                       f"{len(noisy)} of {len(spread)} series over {MAX_SPREAD:.0%})")
    return NoiseReport(load_average, cores, threads, steal, throttle_events, dict(spread), reasons)


class NoiseMonitor:
    """Counters at the start and the end of the timed work; `report(spread)` assesses them with
    the relative spread of each series of repeated timings (relative_spread)."""

    def __init__(self, threads: int, *, proc_stat: str = _PROC_STAT, throttle_glob: str = _THROTTLE_GLOB):
        self.threads = threads
        self._proc_stat, self._throttle_glob = proc_stat, throttle_glob
        self._start = self._end = None

    def _snapshot(self):
        text = _read(self._proc_stat)
        return cpu_times(text) if text else None, throttle_count(self._throttle_glob)

    def __enter__(self) -> NoiseMonitor:
        self._start = self._snapshot()
        return self

    def __exit__(self, *exc) -> None:
        self._end = self._snapshot()

    def report(self, spread: Mapping[str, float]) -> NoiseReport:
        start, end = self._start or (None, None), self._end or self._snapshot()
        throttled = end[1] - start[1] if start[1] is not None and end[1] is not None else None
        try:
            load = os.getloadavg()[0]
        except (OSError, AttributeError):
            load = None
        return assess(spread, load_average=load,
                      cores=os.cpu_count() or 1, threads=self.threads, steal=steal_fraction(start[0], end[0]),
                      throttle_events=throttled)
