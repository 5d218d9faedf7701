"""Comparison of a backend's outputs with the reference's, output by output.

Metrics per output (reference r, candidate c, both flattened to float64):
- max_abs_err  = max |c - r|;  mean_abs_err = mean |c - r|
- max_rel_err  = max |c - r| / max(|r|, floor), floor = REL_FLOOR_FRACTION * max |r| of that
  output. Near-zero entries (logits around 0 are common) would otherwise give huge or infinite
  relative errors that say nothing about accuracy; below 0.1 % of the output's scale the error
  is measured relative to that scale instead.
- cosine       = the smallest per-sample cosine similarity (each sample's output flattened).
- top1 / top5 (classification logits only): fraction of samples whose candidate top-1 equals
  the reference top-1 / whose reference top-1 is among the candidate's top 5.

Pass rule: same shape, no NaN/Inf on EITHER side (a NaN reference would otherwise make every
|c - r| > tol test false and pass anything), every element within |c - r| <= atol + rtol * |r|
(numpy.allclose), and - when the tolerance sets one - cosine >= min_cosine. Tolerances are
finite and >= 0 (a NaN atol would pass anything too). Top-k agreement is reported, not gated:
random-init or near-tie logits can swap ranks within tolerance. Where values are non-finite,
the metrics (max/mean error, cosine, top-k) are computed on the finite part only.

Comparison streams: `ComparisonAccumulator.update()` takes one batch at a time and keeps only
running statistics, so validating N batches needs the memory of one. `compare_output` /
`compare_outputs` are the one-batch case of the same code.
"""
from __future__ import annotations

import math
import numbers
from dataclasses import asdict, dataclass, field


from tinyvim.contract import BF16, FP8, FP16, FP32, INT8
from tinyvim.lazy import lazy_import

np = lazy_import("numpy")

REL_FLOOR_FRACTION = 1e-3


@dataclass(frozen=True)
class Tolerance:
    """|c - r| <= atol + rtol * |r| elementwise, and cosine >= min_cosine when set. Checked on
    construction: atol and rtol finite and >= 0, min_cosine finite in [-1, 1] (ValueError)."""
    atol: float
    rtol: float
    min_cosine: float | None = None
    #: logits only: the fraction of samples whose reference top-1 class is among the
    #: candidate's top 5 must be at least this (quantized models, where elementwise bounds are loose)
    min_top5: float | None = None

    def __post_init__(self):
        for name in ("atol", "rtol"):
            value = getattr(self, name)
            if not _is_real(value) or not math.isfinite(value) or value < 0:
                raise ValueError(f"--{name} must be a finite number >= 0, got {value!r}")
        if self.min_cosine is not None and (not _is_real(self.min_cosine) or not math.isfinite(self.min_cosine)
                                            or not -1 <= self.min_cosine <= 1):
            raise ValueError(f"min_cosine must be a finite number in [-1, 1], got {self.min_cosine!r}")
        if self.min_top5 is not None and (not _is_real(self.min_top5) or not 0 <= self.min_top5 <= 1):
            raise ValueError(f"min_top5 must be a number in [0, 1], got {self.min_top5!r}")


def _is_real(value) -> bool:
    """A real number, numpy's too (they register as numbers.Real), but not a bool (nor numpy's,
    which does not register): checked without importing numpy, as the tolerance table is built
    when this module loads."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


#: Default tolerances by the precision the target computes in.
#: fp32: ORT / TensorRT-fp32 (TF32 off) differ from PyTorch only by the order of float32
#:   reductions and kernel choices: relative round-off ~1e-7 per op, growing to ~1e-6..1e-5
#:   through TinyViM's ~40 layers (a prototype measured <= 3e-7 on the logits). atol 1e-4 /
#:   rtol 1e-3 leaves 10-100x margin yet catches any real defect (a wrong weight, a missing
#:   fusion term, a wrong scan direction moves logits by >= 1e-2).
#: fp16: 11-bit mantissa (eps 9.8e-4) accumulated through the network gives ~1e-2 relative
#:   error on logits of magnitude ~10; cosine >= 0.999 catches systematic errors that stay
#:   inside the loose elementwise bound.
#: bf16: 8-bit mantissa (eps 7.8e-3), another 8x looser.
#: int8 (`tinyvim quantize`): every Conv/Gemm input is rounded to 1/127 of its calibrated range
#:   (per-tensor activations, per-channel weights) - ~0.4 % of the range per layer, through ~90
#:   quantized layers: a few % of each tensor's scale, ~0.1-1 on logits of magnitude ~10. The
#:   elementwise bound is only a guard against gross failure (atol 1, rtol 0.25); the verdict
#:   rests on cosine >= 0.99 (measured 0.9998 for TinyViM-S on ONNX Runtime and OpenVINO;
#:   a saturating int8 kernel measured 0.97-0.994, a wrong scale or axis < 0.9) and on the
#:   reference's top-1 class being in the candidate's top 5 for >= 95 % of the images.
#: fp8 (e4m3: 3 mantissa bits, relative step 6.25 %) per-tensor amax/448 scales: the same guard
#:   and top-5 rule, cosine >= 0.95, set on trained weights (bench/fp8_fixture.py, the digits
#:   fixture, 360 held-out pictures, minmax ranges from 256 training pictures): worst per-picture
#:   cosine 0.966 (1st percentile 0.974, median 0.9965; top-1 unchanged, agreement 98.9 %). Not a
#:   defect of the fp8 graph: ORT's e4m3 Q/DQ equals an exact ml_dtypes rounding, scales mapping
#:   less than amax to 448 clip the weights (cosine < 0), and the loss is e4m3's flat ~31.5 dB
#:   signal-to-noise on every weight tensor against 39-41 dB for 7-bit int8 - the fp8 weights
#:   (activations alone: 0.996), most of it in the stem (restored to float: 0.996). 0.95 leaves
#:   1.5x the measured worst 1 - cosine; the entropy ranges' fp8 (0.896) and broken scales fail.
DEFAULT_TOLERANCES = {
    FP32: Tolerance(atol=1e-4, rtol=1e-3),
    FP16: Tolerance(atol=5e-2, rtol=5e-2, min_cosine=0.999),
    BF16: Tolerance(atol=2.5e-1, rtol=1e-1, min_cosine=0.995),
    INT8: Tolerance(atol=1.0, rtol=0.25, min_cosine=0.99, min_top5=0.95),
    FP8: Tolerance(atol=1.0, rtol=0.25, min_cosine=0.95, min_top5=0.95),
}


def tolerance_for(precision: str, atol: float | None = None, rtol: float | None = None) -> Tolerance:
    """The default tolerance of `precision`, with atol/rtol overridden where given."""
    if precision not in DEFAULT_TOLERANCES:
        raise ValueError(f"no tolerance for precision {precision!r}; known: {', '.join(DEFAULT_TOLERANCES)}")
    base = DEFAULT_TOLERANCES[precision]
    return Tolerance(atol=base.atol if atol is None else float(atol),
                     rtol=base.rtol if rtol is None else float(rtol),
                     min_cosine=base.min_cosine, min_top5=base.min_top5)


@dataclass
class OutputComparison:
    """Metrics and verdict for one named output (arrays of shape (N, ...)). Metrics that could
    not be computed (no finite data, shape mismatch) are NaN here and null in `to_dict()`."""
    name: str
    shape: list[int]
    max_abs_err: float = float("nan")
    max_rel_err: float = float("nan")
    mean_abs_err: float = float("nan")
    cosine: float = float("nan")
    top1: float | None = None
    top5: float | None = None
    mismatches: int = 0
    nonfinite_reference: int = 0
    nonfinite_candidate: int = 0
    passed: bool = False
    reason: str = ""

    def to_dict(self) -> dict:
        return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in asdict(self).items()}


def _cosine_per_sample(r: np.ndarray, c: np.ndarray) -> np.ndarray:
    r = _unit_scale(r.reshape(r.shape[0], -1))
    c = _unit_scale(c.reshape(c.shape[0], -1))
    num = np.sum(r * c, axis=1)
    den = np.linalg.norm(r, axis=1) * np.linalg.norm(c, axis=1)
    # Two all-zero samples are identical; one zero vs. non-zero is maximally different.
    both_zero = den == 0
    cos = np.where(both_zero, np.where(np.all(r == c, axis=1), 1.0, 0.0), num / np.where(both_zero, 1, den))
    return np.clip(cos, -1.0, 1.0)


def _unit_scale(rows: np.ndarray) -> np.ndarray:
    """Each row divided by its largest |value| (cosine is scale-free): finite values near
    the float64 limit would otherwise overflow the dot products to inf and the cosine to NaN."""
    peak = np.max(np.abs(rows), axis=1, keepdims=True) if rows.size else np.ones((rows.shape[0], 1))
    return rows / np.where(peak > 0, peak, 1.0)


def topk_agreement(ref_logits: np.ndarray, logits: np.ndarray) -> tuple[float, float]:
    """(top-1 agreement, fraction whose reference top-1 is in the candidate top-5); (N, classes)."""
    r = ref_logits.reshape(ref_logits.shape[0], -1)
    c = logits.reshape(logits.shape[0], -1)
    ref_top1 = np.argmax(r, axis=1)
    top1 = float(np.mean(np.argmax(c, axis=1) == ref_top1))
    k = min(5, c.shape[1])
    cand_top5 = np.argpartition(-c, k - 1, axis=1)[:, :k]
    top5 = float(np.mean(np.any(cand_top5 == ref_top1[:, None], axis=1)))
    return top1, top5


def _first_index(mask: np.ndarray, offset: int) -> str:
    """'[i, j, ...]' of the first True in `mask`, its sample index shifted by `offset`."""
    idx = [int(i) for i in np.unravel_index(int(np.argmax(mask)), mask.shape)]
    if idx:
        idx[0] += offset
    return "[" + ", ".join(map(str, idx)) + "]"


class OutputAccumulator:
    """Running comparison of one output, fed batch by batch (arrays (n, ...), the same trailing
    shape every time); `result()` gives exactly what comparing the concatenation would.

    max_rel_err streams exactly although its floor (REL_FLOOR_FRACTION * max |r| over ALL
    samples) is known only at the end: the floor only grows, so an element with |r| below the
    floor so far only ever counts through max |c - r| (kept as one number), and of the others
    only the Pareto front in (|c - r|, |c - r| / |r|) can be the maximum of
    |c - r| / max(|r|, floor) for a larger floor (typically a handful of elements)."""

    def __init__(self, name: str, tolerance: Tolerance, *, is_logits: bool | None = None):
        self.name = name
        self.tolerance = tolerance
        self.is_logits = (name == "logits") if is_logits is None else is_logits
        self.trailing: tuple[int, ...] | None = None
        self.samples = 0
        self.elements = 0
        self.reason = ""
        self.nonfinite = {"reference": 0, "candidate": 0}
        self.first_nonfinite: dict[str, str] = {}
        self.finite_pairs = 0
        self.max_abs = 0.0
        self.sum_abs = 0.0
        self.scale = 0.0                       # max |r| over finite reference values
        self.low_diff = 0.0                    # max |c - r| where |r| < the floor so far
        self.front_abs_r = np.empty(0)         # Pareto front for max_rel_err (see class doc)
        self.front_diff = np.empty(0)
        self.min_cosine = math.inf
        self.cosine_samples = 0
        self.top1_hits = 0.0
        self.top5_hits = 0.0
        self.topk_samples = 0
        self.mismatches = 0

    def fail(self, reason: str) -> None:
        """Mark the output failed for a reason that makes its metrics meaningless (shape, missing)."""
        self.reason = self.reason or reason

    def _count(self, reference: np.ndarray) -> bool:
        """Account the reference batch's samples (the reported shape is the reference's);
        False when its trailing shape differs from the first batch's."""
        if self.trailing is None:
            self.trailing = reference.shape[1:]
        elif reference.shape[1:] != self.trailing:
            self.fail(f"batch shape {list(reference.shape)} differs from the first batch's {list(self.trailing)}")
            return False
        self.samples += reference.shape[0]
        return True

    def missing(self, reference: np.ndarray) -> None:
        """The candidate has no output of this name in this batch."""
        self._count(np.atleast_1d(np.asarray(reference)))
        self.fail("missing from the candidate's outputs")

    def update(self, reference: np.ndarray, candidate: np.ndarray) -> None:
        reference, candidate = np.atleast_1d(np.asarray(reference)), np.atleast_1d(np.asarray(candidate))
        if not self._count(reference) or self.reason:
            return
        if reference.shape != candidate.shape:
            self.fail(f"shape {list(candidate.shape)} != reference {list(reference.shape)}")
            return
        with np.errstate(all="ignore"):
            self._update(reference.astype(np.float64), candidate.astype(np.float64), reference.shape[0])
        self.elements += reference.size

    def _update(self, r: np.ndarray, c: np.ndarray, n: int) -> None:
        offset = self.samples - n          # index of this batch's first sample
        finite_r, finite_c = np.isfinite(r), np.isfinite(c)
        for side, finite in (("reference", finite_r), ("candidate", finite_c)):
            bad = int(finite.size - np.count_nonzero(finite))
            if bad and side not in self.first_nonfinite:
                self.first_nonfinite[side] = _first_index(~finite, offset)
            self.nonfinite[side] += bad
        both = finite_r & finite_c
        abs_r = np.abs(r)
        diff = np.where(both, np.abs(c - r), 0.0)
        d = diff[both]
        a = abs_r[both]
        if d.size:
            self.finite_pairs += d.size
            self.max_abs = max(self.max_abs, float(d.max()))
            self.sum_abs += float(d.sum())
        if finite_r.any():
            self.scale = max(self.scale, float(abs_r[finite_r].max()))
        self._update_relative(a, d)
        self.mismatches += int(np.count_nonzero(diff > self.tolerance.atol + self.tolerance.rtol * abs_r))
        # cosine and top-k only on samples that are finite throughout, on both sides
        rows = both.reshape(n, -1).all(axis=1) if n else np.zeros(0, bool)
        if rows.any():
            rf, cf = r[rows].reshape(int(rows.sum()), -1), c[rows].reshape(int(rows.sum()), -1)
            self.min_cosine = min(self.min_cosine, float(np.min(_cosine_per_sample(rf, cf))))
            self.cosine_samples += rf.shape[0]
            if self.is_logits and rf.shape[1]:
                top1, top5 = topk_agreement(rf, cf)
                self.top1_hits += top1 * rf.shape[0]
                self.top5_hits += top5 * rf.shape[0]
                self.topk_samples += rf.shape[0]

    def _floor(self) -> float:
        return max(REL_FLOOR_FRACTION * self.scale, np.finfo(np.float64).tiny)

    def _update_relative(self, abs_r: np.ndarray, diff: np.ndarray) -> None:
        floor = self._floor()
        a = np.concatenate([self.front_abs_r, abs_r])
        d = np.concatenate([self.front_diff, diff])
        low = a < floor
        if low.any():
            self.low_diff = max(self.low_diff, float(d[low].max()))
        a, d = a[~low], d[~low]
        keep = d > 0
        a, d = a[keep], d[keep]
        if a.size:
            ratio = d / a
            order = np.lexsort((-ratio, -d))            # largest error first, then largest ratio
            a, d, ratio = a[order], d[order], ratio[order]
            best_before = np.concatenate([[-np.inf], np.maximum.accumulate(ratio)[:-1]])
            front = ratio > best_before
            a, d = a[front], d[front]
        self.front_abs_r, self.front_diff = a, d

    def result(self) -> OutputComparison:
        shape = [self.samples, *(self.trailing or ())]
        out = OutputComparison(name=self.name, shape=shape)
        if self.reason:
            out.reason = self.reason
            return out
        out.nonfinite_reference, out.nonfinite_candidate = self.nonfinite["reference"], self.nonfinite["candidate"]
        if self.finite_pairs or not self.elements:
            floor = self._floor()
            rel = self.low_diff / floor
            if self.front_diff.size:
                rel = max(rel, float(np.max(self.front_diff / np.maximum(self.front_abs_r, floor))))
            out.max_abs_err, out.max_rel_err = self.max_abs, rel
            out.mean_abs_err = self.sum_abs / self.finite_pairs if self.finite_pairs else 0.0
        if self.cosine_samples:
            out.cosine = self.min_cosine
        elif not self.elements:
            out.cosine = 1.0
        if self.topk_samples:
            out.top1, out.top5 = self.top1_hits / self.topk_samples, self.top5_hits / self.topk_samples
        out.mismatches = self.mismatches
        reasons = []
        for side in ("reference", "candidate"):
            if self.nonfinite[side]:
                reasons.append(f"{self.nonfinite[side]} non-finite value(s) in the {side} (first at "
                               f"{self.first_nonfinite[side]})")
        if self.mismatches:
            reasons.append(f"{self.mismatches}/{self.elements} elements outside atol={self.tolerance.atol:g} "
                           f"rtol={self.tolerance.rtol:g}")
        if self.tolerance.min_cosine is not None:
            if not math.isfinite(out.cosine):
                reasons.append("cosine undefined (no finite sample)")
            elif out.cosine < self.tolerance.min_cosine:
                reasons.append(f"cosine {out.cosine:.6f} < {self.tolerance.min_cosine}")
        if self.tolerance.min_top5 is not None and out.top5 is not None and out.top5 < self.tolerance.min_top5:
            reasons.append(f"top-5 agreement {out.top5:.3f} < {self.tolerance.min_top5}")
        out.passed = not reasons
        out.reason = "; ".join(reasons)
        return out


def compare_output(name: str, reference: np.ndarray, candidate: np.ndarray, tolerance: Tolerance,
                   *, is_logits: bool | None = None) -> OutputComparison:
    """Compare one output; arrays (N, ...) with N samples. `is_logits` defaults to name == 'logits'."""
    acc = OutputAccumulator(name, tolerance, is_logits=is_logits)
    acc.update(reference, candidate)
    return acc.result()


@dataclass
class Comparison:
    """All outputs of one reference-vs-candidate comparison."""
    tolerance: Tolerance
    outputs: list[OutputComparison] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return bool(self.outputs) and all(o.passed for o in self.outputs)


class ComparisonAccumulator:
    """`compare_outputs` batch by batch: `update(reference, candidate)` with one batch's
    {name: array} dicts, `result()` at the end. Memory is that of one batch."""

    def __init__(self, tolerance: Tolerance):
        self.tolerance = tolerance
        self.outputs: dict[str, OutputAccumulator] = {}

    def update(self, reference: dict[str, np.ndarray], candidate: dict[str, np.ndarray]) -> None:
        for name, ref in reference.items():
            acc = self.outputs.setdefault(name, OutputAccumulator(name, self.tolerance))
            if name in candidate:
                acc.update(ref, candidate[name])
            else:
                acc.missing(ref)

    def result(self) -> Comparison:
        return Comparison(tolerance=self.tolerance, outputs=[acc.result() for acc in self.outputs.values()])


def compare_outputs(reference: dict[str, np.ndarray], candidate: dict[str, np.ndarray],
                    tolerance: Tolerance) -> Comparison:
    """Compare every reference output with the candidate's output of the same name."""
    acc = ComparisonAccumulator(tolerance)
    acc.update(reference, candidate)
    return acc.result()
