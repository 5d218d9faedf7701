"""Independent float64 reference of the cross selective scan (numpy, plain loops).

Deliberately written from the scan's definition (tinyvim.ops.scan's module docstring), sharing no code with the
torch implementations: it materialises the four scan orders explicitly
(row-major, column-major and their reverses), runs the recurrence per channel,
and scatters each direction back to its (h, w) position before summing.
Used by the tests, the CPU twin tests and the GPU check as ground truth.
"""
from __future__ import annotations

import numpy as np


def scan_orders(h: int, w: int) -> np.ndarray:
    """(4, h*w) int64: for direction k and step t, the row-major position visited."""
    rows = np.arange(h * w).reshape(h, w)
    k0 = rows.reshape(-1)            # row-major
    k1 = rows.T.reshape(-1)          # column-major
    return np.stack([k0, k1, k0[::-1], k1[::-1]]).copy()


def _softplus(v: np.ndarray) -> np.ndarray:
    return np.logaddexp(0.0, v)


def cross_selective_scan_reference(x, delta, Bs, Cs, A, Ds, delta_bias) -> np.ndarray:
    """y (B, D, h, w) in float64.

    x (B, D, h, w); delta (B, 4D, h, w) raw; Bs, Cs (B, 4, N, h, w);
    A (4D, N) (already -exp(A_logs)); Ds (4D,); delta_bias (4D,).
    """
    x, delta, Bs, Cs, A, Ds, delta_bias = (
        np.asarray(t, dtype=np.float64) for t in (x, delta, Bs, Cs, A, Ds, delta_bias))
    b_sz, d_sz, h, w = x.shape
    n_sz = A.shape[1]
    L = h * w
    orders = scan_orders(h, w)
    u = x.reshape(b_sz, d_sz, L)
    dt = delta.reshape(b_sz, 4, d_sz, L)
    Bf = Bs.reshape(b_sz, 4, n_sz, L)
    Cf = Cs.reshape(b_sz, 4, n_sz, L)
    y = np.zeros((b_sz, d_sz, L))
    for b in range(b_sz):
        for k in range(4):
            order = orders[k]
            for d in range(d_sz):
                c = k * d_sz + d
                state = np.zeros(n_sz)
                for t in range(L):
                    p = order[t]
                    step = _softplus(dt[b, k, d, p] + delta_bias[c])
                    state = np.exp(step * A[c]) * state + step * Bf[b, k, :, p] * u[b, d, p]
                    y[b, d, p] += state @ Cf[b, k, :, p] + Ds[c] * u[b, d, p]
    return y.reshape(b_sz, d_sz, h, w)


def random_scan_inputs(batch: int, d: int, h: int, w: int, n: int = 8, seed: int = 0,
                       dtype=np.float64) -> dict[str, np.ndarray]:
    """Inputs with the statistics of a trained SS2D (A from A_logs = log(1..N), small dt bias)."""
    rng = np.random.default_rng(seed)
    a_logs = np.log(np.tile(np.arange(1, n + 1, dtype=np.float64), (4 * d, 1)))
    return {
        "x": rng.standard_normal((batch, d, h, w)).astype(dtype),
        "delta": (0.5 * rng.standard_normal((batch, 4 * d, h, w))).astype(dtype),
        "Bs": rng.standard_normal((batch, 4, n, h, w)).astype(dtype),
        "Cs": rng.standard_normal((batch, 4, n, h, w)).astype(dtype),
        "A": (-np.exp(a_logs) * rng.uniform(0.5, 1.5, (4 * d, n))).astype(dtype),
        "Ds": rng.standard_normal(4 * d).astype(dtype),
        "delta_bias": rng.uniform(-4.0, -1.0, 4 * d).astype(dtype),
    }
