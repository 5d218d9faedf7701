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

Pass rule: every element satisfies |c - r| <= atol + rtol * |r| (numpy.allclose), no NaN/Inf,
same shape, and - when the tolerance sets one - cosine >= min_cosine. Top-k agreement is
reported, not gated: random-init or near-tie logits can swap ranks within tolerance.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

REL_FLOOR_FRACTION = 1e-3


@dataclass(frozen=True)
class Tolerance:
    atol: float
    rtol: float
    min_cosine: float | None = None


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
DEFAULT_TOLERANCES = {
    "fp32": Tolerance(atol=1e-4, rtol=1e-3),
    "fp16": Tolerance(atol=5e-2, rtol=5e-2, min_cosine=0.999),
    "bf16": Tolerance(atol=2.5e-1, rtol=1e-1, min_cosine=0.995),
}


def tolerance_for(precision: str, atol: float | None = None, rtol: float | None = None) -> Tolerance:
    """The default tolerance of `precision`, with atol/rtol overridden where given."""
    if precision not in DEFAULT_TOLERANCES:
        raise ValueError(f"no tolerance for precision {precision!r}; known: {', '.join(DEFAULT_TOLERANCES)}")
    base = DEFAULT_TOLERANCES[precision]
    return Tolerance(atol=base.atol if atol is None else float(atol),
                     rtol=base.rtol if rtol is None else float(rtol),
                     min_cosine=base.min_cosine)


@dataclass
class OutputComparison:
    """Metrics and verdict for one named output (arrays of shape (N, ...))."""
    name: str
    shape: list[int]
    max_abs_err: float = float("nan")
    max_rel_err: float = float("nan")
    mean_abs_err: float = float("nan")
    cosine: float = float("nan")
    top1: float | None = None
    top5: float | None = None
    mismatches: int = 0
    passed: bool = False
    reason: str = ""

    def to_dict(self) -> dict:
        return asdict(self)


def _cosine_per_sample(r: np.ndarray, c: np.ndarray) -> np.ndarray:
    r = r.reshape(r.shape[0], -1)
    c = c.reshape(c.shape[0], -1)
    num = np.sum(r * c, axis=1)
    den = np.linalg.norm(r, axis=1) * np.linalg.norm(c, axis=1)
    # Two all-zero samples are identical; one zero vs. non-zero is maximally different.
    both_zero = den == 0
    cos = np.where(both_zero, np.where(np.all(r == c, axis=1), 1.0, 0.0), num / np.where(both_zero, 1, den))
    return cos


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


def compare_output(name: str, reference: np.ndarray, candidate: np.ndarray, tolerance: Tolerance,
                   *, is_logits: bool | None = None) -> OutputComparison:
    """Compare one output; arrays (N, ...) with N samples. `is_logits` defaults to name == 'logits'."""
    result = OutputComparison(name=name, shape=list(reference.shape))
    if reference.shape != candidate.shape:
        result.reason = f"shape {list(candidate.shape)} != reference {list(reference.shape)}"
        return result
    r = reference.astype(np.float64)
    c = candidate.astype(np.float64)
    if not np.all(np.isfinite(c)):
        result.reason = f"{int(np.sum(~np.isfinite(c)))} non-finite values"
        return result
    diff = np.abs(c - r)
    scale = float(np.max(np.abs(r))) if r.size else 0.0
    floor = max(REL_FLOOR_FRACTION * scale, np.finfo(np.float64).tiny)
    result.max_abs_err = float(diff.max()) if diff.size else 0.0
    result.mean_abs_err = float(diff.mean()) if diff.size else 0.0
    result.max_rel_err = float(np.max(diff / np.maximum(np.abs(r), floor))) if diff.size else 0.0
    result.cosine = float(np.min(_cosine_per_sample(r, c))) if r.size else 1.0
    if (name == "logits") if is_logits is None else is_logits:
        result.top1, result.top5 = topk_agreement(r, c)
    bad = diff > tolerance.atol + tolerance.rtol * np.abs(r)
    result.mismatches = int(np.sum(bad))
    reasons = []
    if result.mismatches:
        reasons.append(f"{result.mismatches}/{diff.size} elements outside atol={tolerance.atol:g} "
                       f"rtol={tolerance.rtol:g}")
    if tolerance.min_cosine is not None and result.cosine < tolerance.min_cosine:
        reasons.append(f"cosine {result.cosine:.6f} < {tolerance.min_cosine}")
    result.passed = not reasons
    result.reason = "; ".join(reasons)
    return result


@dataclass
class Comparison:
    """All outputs of one reference-vs-candidate comparison."""
    tolerance: Tolerance
    outputs: list[OutputComparison] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return bool(self.outputs) and all(o.passed for o in self.outputs)


def compare_outputs(reference: dict[str, np.ndarray], candidate: dict[str, np.ndarray],
                    tolerance: Tolerance) -> Comparison:
    """Compare every reference output with the candidate's output of the same name."""
    comparison = Comparison(tolerance=tolerance)
    for name, ref in reference.items():
        if name not in candidate:
            comparison.outputs.append(OutputComparison(name=name, shape=list(ref.shape),
                                                       reason="missing from the candidate's outputs"))
            continue
        comparison.outputs.append(compare_output(name, ref, candidate[name], tolerance))
    return comparison
