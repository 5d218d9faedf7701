"""The SS2D cross selective scan: one op contract, several implementations.

Contract (natural layout; tinyvim.contract.SCAN_PLUGIN declares the same shapes for the ONNX node):
    x          (B, D, h, w)      the low-frequency map fed to the scan (u)
    delta      (B, 4D, h, w)     raw dt, before delta_bias and softplus
    Bs, Cs     (B, 4, N, h, w)   per-direction input/output projections
    A          (4D, N)           = -exp(A_logs)
    Ds         (4D,)             skip weights
    delta_bias (4D,)
    ->  y      (B, D, h, w)      sum over the four scan orders (row-major,
                                 column-major, and their reverses) of the
                                 selective-scan outputs put back at their (h, w)
                                 positions, D*u skip included.

Direction k uses channels k*D:(k+1)*D of delta/A/Ds/delta_bias.
The scan computes in float32 (the reference does so even under autocast; float64 stays
float64);
the result is cast back to x's dtype.

Implementations (``scan_implementation(name)`` picks one):
    sequential  the plain recurrence, one step per position: the reference.
    parallel    a recursive-doubling (odd-even) prefix scan of log depth built from
                Gather/Slice/Concat/Mul/Add/Exp only. Decay factors exp(dt*A) lie in
                (0, 1] and are only ever multiplied, never divided or exponentiated from a
                positive cumulative sum: no overflow whatever the sequence length. The
                portable ONNX export writes the same algorithm directly as ONNX nodes
                (tinyvim.export.scan_lowering) rather than tracing this function.
    dynamic     the parallel scan with nothing taken from the grid size: the four orders
                are reshapes/transposes/flips of the map, the padding to a multiple of 8 is
                derived from the length, three odd-even levels run as in `parallel`, and the
                remaining ceil(L/8) steps run as one loop (torch's scan op when compiled).
                The eager twin of the symbolic-size ONNX lowering (`export --dynamic-size`).
    cuda        registered by tinyvim.plugins (our CUDA kernel through ctypes).
    auto        the default: cuda for CUDA tensors when the kernel is built, else parallel.
"""
from __future__ import annotations

import contextlib
import functools
import threading
from collections.abc import Callable, Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torch._higher_order_ops.scan import scan as _scan_hop

from tinyvim.contract import SCAN_PLUGIN

ScanFn = Callable[[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor], Tensor]


# --------------------------------------------------------------------- layout helpers
@functools.lru_cache(maxsize=64)
def _orders_np(h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """(order, inverse), each (4, L) int64: order[k, t] is the row-major position visited
    at step t of direction k; inverse[k, p] the step at which position p is visited.
    Built with numpy, not torch: under tracing these must stay constants, not graph ops."""
    pos = np.arange(h * w).reshape(h, w)
    k0 = pos.reshape(-1)
    k1 = pos.T.reshape(-1)
    order = np.stack([k0, k1, k0[::-1], k1[::-1]])
    inverse = np.argsort(order, axis=1)
    return order, inverse


def scan_orders(h: int, w: int, device: torch.device | str = "cpu") -> tuple[Tensor, Tensor]:
    order, inverse = _orders_np(h, w)
    return torch.tensor(order, device=device), torch.tensor(inverse, device=device)


@functools.lru_cache(maxsize=64)
def _layout(h: int, w: int, Lp: int, parity_split: bool = False) -> tuple[np.ndarray, ...]:
    """Index constants for a scan over an h×w grid padded to Lp steps:
    order (4, Lp) positions gathered for each slot (padding repeats position 0);
    flat_in (4, Lp) the same into a flattened (4·L) axis, direction k reading block k;
    flat_out (4, L) slot of each position into a flattened (4·Lp) axis;
    valid (Lp, 1) 1 for real steps, 0 for padding.
    parity_split lays the steps out as [0, 2, 4, …, 1, 3, 5, …] so that the parallel
    scan's first level reads its even and odd halves as contiguous blocks."""
    L = h * w
    order, inverse = _orders_np(h, w)
    order = np.concatenate([order, np.repeat(order[:, :1], Lp - L, axis=1)], axis=1)
    steps = np.arange(Lp)
    slot_of_step = steps
    if parity_split:
        slot_of_step = np.where(steps % 2 == 0, steps // 2, Lp // 2 + steps // 2)
    step_in_slot = np.argsort(slot_of_step)
    order = order[:, step_in_slot]
    flat_in = order + np.arange(4)[:, None] * L
    flat_out = slot_of_step[inverse] + np.arange(4)[:, None] * Lp
    valid = (step_in_slot < L).astype(np.float32).reshape(Lp, 1)
    return order, flat_in, flat_out, valid


@functools.lru_cache(maxsize=64)
def _layout_tensors_cached(h: int, w: int, Lp: int, parity_split: bool, device: torch.device) -> tuple[Tensor, ...]:
    return tuple(torch.tensor(a, device=device) for a in _layout(h, w, Lp, parity_split))


def _layout_tensors(h: int, w: int, Lp: int, parity_split: bool, device: torch.device) -> tuple[Tensor, ...]:
    """The index constants as tensors on `device`. Eager calls reuse cached copies (no
    host-to-device copy per call on a GPU); traced calls build fresh ones, which become
    graph constants (a cached tensor made inside a trace would be a fake tensor)."""
    if torch.compiler.is_compiling() or torch.jit.is_tracing():
        return tuple(torch.tensor(a, device=device) for a in _layout(h, w, Lp, parity_split))
    return _layout_tensors_cached(h, w, Lp, parity_split, torch.device(device))


def _per_direction_to_steps(t: Tensor, flat: Tensor) -> Tensor:
    """(B, 4, C, L) in row-major positions -> (B, 4, L, C) in each direction's step order.

    One Gather on a (B, C, 4L) view: each direction reads its own order."""
    b, _, c, L = t.shape
    g = t.permute(0, 2, 1, 3).reshape(b, c, 4 * L)[:, :, flat]     # (B, C, 4, L)
    return g.permute(0, 2, 3, 1)


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """float64 stays float64 (for checks); everything else scans in float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def _prepare(x, delta, Bs, Cs, A, Ds, delta_bias, padded_length: int | None = None, parity_split: bool = False):
    """Everything in the compute dtype, arranged (B, 4, Lp, ·) in step order.

    With padded_length Lp > L, steps L..Lp-1 get dt = 0, i.e. the identity map
    (exp(0*A) = 1, dt*B*u = 0): they leave the state untouched and are dropped by the merge."""
    b, d, h, w = x.shape
    n = A.shape[1]
    L = h * w
    Lp = padded_length or L
    order, flat_in, flat_out, valid = _layout_tensors(h, w, Lp, parity_split, x.device)
    ct = compute_dtype(x.dtype)
    x, delta, Bs, Cs, A, Ds, delta_bias = (
        t.to(ct) for t in (x, delta, Bs, Cs, A, Ds, delta_bias))
    u = x.reshape(b, d, L)[:, :, order].permute(0, 2, 3, 1)                      # (B,4,Lp,D)
    dt = _per_direction_to_steps(delta.reshape(b, 4, d, L), flat_in)              # (B,4,Lp,D)
    dt = softplus_stable(dt + delta_bias.reshape(4, 1, d))
    if Lp > L:
        dt = dt * valid.to(ct)
    Bq = _per_direction_to_steps(Bs.reshape(b, 4, n, L), flat_in)                 # (B,4,Lp,N)
    Cq = _per_direction_to_steps(Cs.reshape(b, 4, n, L), flat_in)                 # (B,4,Lp,N)
    A4 = A.reshape(4, d, n).transpose(1, 2)                                       # (4,N,D)
    return u, dt, Bq, Cq, A4, Ds.reshape(4, d), flat_out


def _merge(y: Tensor, flat_inverse: Tensor, h: int, w: int, dtype: torch.dtype) -> Tensor:
    """(B, 4, L, D) in step order -> (B, D, h, w): back to row-major, summed over k."""
    b, _, Lp, d = y.shape
    y_pos = y.reshape(b, 4 * Lp, d)[:, flat_inverse]                              # (B,4,L,D)
    return y_pos.sum(1).transpose(1, 2).reshape(b, d, h, w).to(dtype)


# ------------------------------------------------- the same layout, derived from the runtime shape
def _directions_to_steps(t: Tensor) -> Tensor:
    """(B, 4, C, h, w) -> (B, 4, L, C): direction k's channels in its own visiting order
    (k=0 row-major, 1 column-major, 2 and 3 their reverses), built from reshapes, one
    transpose and one flip of the map, so h and w may be symbolic (no index table)."""
    b, _, c, h, w = t.shape
    rows = t[:, 0::2].reshape(b, 2, c, h * w)                                     # k = 0, 2
    cols = t[:, 1::2].transpose(3, 4).reshape(b, 2, c, h * w)                     # k = 1, 3
    seq = torch.stack([rows, cols], 2).reshape(b, 4, c, h * w)                    # k = 0..3, all forward
    seq = torch.cat([seq[:, :2], seq[:, 2:].flip(3)], 1)
    return seq.transpose(2, 3)


def _prepare_dynamic(x, delta, Bs, Cs, A, Ds, delta_bias):
    """What `_prepare(..., Lp, parity_split=True)` returns, for Lp = 8 * ceil(L / 8), with every
    index and the padding computed from the runtime shape. The four inputs are reordered
    together, as channels [dt (D) | u (D) | B (N) | C (N)] of one map."""
    b, d, h, w = x.shape
    n = A.shape[1]
    L = h * w
    Lp = 8 * ((L + 7) // 8)
    ct = compute_dtype(x.dtype)
    x, delta, Bs, Cs, A, Ds, delta_bias = (
        t.to(ct) for t in (x, delta, Bs, Cs, A, Ds, delta_bias))
    maps = torch.cat([delta.reshape(b, 4, d, h, w), x.unsqueeze(1).expand(b, 4, d, h, w), Bs, Cs], dim=2)
    seq = F.pad(_directions_to_steps(maps), (0, 0, 0, Lp - L))                   # (B,4,Lp,2D+2N)
    seq = seq.reshape(b, 4, Lp // 2, 2, 2 * (d + n)).transpose(2, 3).reshape(b, 4, Lp, 2 * (d + n))
    dt, u, Bq, Cq = torch.split(seq, (d, d, n, n), dim=3)
    # padded steps get dt = 0: the identity map (as in _prepare)
    valid = (torch.arange(Lp, device=x.device) < L).reshape(Lp // 2, 2).transpose(0, 1).reshape(Lp, 1).to(ct)
    dt = softplus_stable(dt + delta_bias.reshape(4, 1, d)) * valid
    A4 = A.reshape(4, d, n).transpose(1, 2)                                       # (4,N,D)
    return u, dt, Bq, Cq, A4, Ds.reshape(4, d)


def _merge_dynamic(y: Tensor, h, w, dtype: torch.dtype) -> Tensor:
    """`_merge` for the parity-split (B, 4, Lp, D) steps of `_prepare_dynamic`: back to step
    order, padding dropped, the reversed directions flipped, the column-major ones transposed."""
    b, _, Lp, d = y.shape
    y = y.reshape(b, 4, 2, Lp // 2, d).transpose(2, 3).reshape(b, 4, Lp, d)[:, :, :h * w]
    forward = y[:, :2] + y[:, 2:].flip(2)                                         # (B,2,L,D) row-, column-major
    rows = forward[:, 0].reshape(b, h, w, d)
    cols = forward[:, 1].reshape(b, w, h, d).transpose(1, 2)
    return (rows + cols).permute(0, 3, 1, 2).to(dtype)


def softplus_stable(v: Tensor) -> Tensor:
    """softplus without a threshold branch: relu(v) + log1p(exp(-|v|)).

    Same value as F.softplus (whose threshold=20 shortcut differs by < 3e-9), and it
    lowers to plain elementwise ONNX ops, which ONNX Runtime runs faster than Softplus."""
    return torch.relu(v) + torch.log1p(torch.exp(-v.abs()))


# --------------------------------------------------------------------- implementations
def scan_sequential(x, delta, Bs, Cs, A, Ds, delta_bias) -> Tensor:
    """The plain recurrence h_t = exp(dt_t A) h_{t-1} + dt_t B_t u_t, y_t = <C_t, h_t> + D u_t,
    one step per position, as the original selective_scan_ref computes it (decays and
    inputs for all steps first, then a loop over the sequence)."""
    b, d, h, w = x.shape
    u, dt, Bq, Cq, A4, D4, flat_inv = _prepare(x, delta, Bs, Cs, A, Ds, delta_bias)
    dA = torch.exp(dt.unsqueeze(3) * A4.unsqueeze(1))                              # (B,4,L,N,D)
    dBu = (dt * u).unsqueeze(3) * Bq.unsqueeze(-1)                                 # (B,4,L,N,D)
    state = torch.zeros_like(dA[:, :, 0])
    ys = []
    for t in range(h * w):
        state = dA[:, :, t] * state + dBu[:, :, t]
        ys.append(torch.einsum("bknd,bkn->bkd", state, Cq[:, :, t]))
    y = torch.stack(ys, dim=2) + D4.unsqueeze(1) * u
    return _merge(y, flat_inv, h, w, x.dtype)


def _in_place_ok() -> bool:
    """Eager calls update the scan's own temporaries in place (half the allocations and
    copies on a memory-bound 2-core CPU); traced calls (ONNX export, torch.compile) keep
    the functional form, which exports to plain Mul/Add/Concat."""
    return not torch.compiler.is_compiling() and not torch.jit.is_tracing()


def _odd_even_scan(a: Tensor, b: Tensor, dim: int, in_place: bool = False, depth: int | None = None) -> Tensor:
    """States of h_t = a_t * h_{t-1} + b_t (h_{-1} = 0) along `dim`, by recursive doubling.

    Pairs (2i, 2i+1) are composed into one affine map, the half-length sequence is
    scanned recursively, and even positions are filled from their odd predecessor.
    Depth 2*ceil(log2 n); total work ~7n element-ops (work-efficient, unlike
    Hillis-Steele's n*log n), which matters on a 2-core CPU as much as on a GPU.
    Odd lengths are padded with the identity map (a=1, b=0).
    in_place: a and b are temporaries the caller gives up; the states are written into b.
    depth: for a symbolic length (dynamic-size export) the caller guarantees n divisible by
    2**depth; after `depth` levels the rest runs as one loop (`_loop_scan`), so nothing
    branches on the length at trace time."""
    if depth == 0:
        return _loop_scan(a, b, dim)
    n = a.shape[dim]
    odd = depth is None and n % 2
    if depth is None and n == 1:
        return b
    if odd:
        pad_shape = list(a.shape)
        pad_shape[dim] = 1
        a = torch.cat([a, a.new_ones(pad_shape)], dim)
        b = torch.cat([b, b.new_zeros(pad_shape)], dim)
    shape = list(a.shape)
    pairs = shape[:dim] + [shape[dim] // 2, 2] + shape[dim + 1:]
    a2, b2 = a.reshape(pairs), b.reshape(pairs)
    a_even, a_odd = a2.select(dim + 1, 0), a2.select(dim + 1, 1)
    b_even, b_odd = b2.select(dim + 1, 0), b2.select(dim + 1, 1)
    sub_depth = None if depth is None else depth - 1
    if in_place:
        b_pair = b_odd.addcmul_(a_odd, b_even)           # before a_odd is overwritten
        s_odd = _odd_even_scan(a_odd.mul_(a_even), b_pair, dim, in_place=True, depth=sub_depth)
        if s_odd.data_ptr() != b_odd.data_ptr():          # the recursion had to pad: copy back
            b_odd.copy_(s_odd)
        m = b_even.shape[dim]
        b_even.narrow(dim, 1, m - 1).addcmul_(a_even.narrow(dim, 1, m - 1), b_odd.narrow(dim, 0, m - 1))
        states = b2.reshape(shape)
    else:
        s_odd = _odd_even_scan(a_odd * a_even, torch.addcmul(b_odd, a_odd, b_even), dim, depth=sub_depth)
        s_even = _fill_even(a_even, b_even, s_odd, dim)
        states = torch.stack([s_even, s_odd], dim + 1).reshape(shape)
    return states.narrow(dim, 0, n) if odd else states


def _loop_step(state: Tensor, step: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
    a, b = step
    # `state` must be the first operand: OpenVINO 2026.4 mis-binds an ONNX Scan body's inputs
    # when the body computes a * state (every step then reads a as the state: wrong by O(1);
    # ORT is right either way). tests/test_dynamic_size.py runs OpenVINO on a dynamic export.
    state = state * a + b
    return state, state.clone()


def _loop_scan(a: Tensor, b: Tensor, dim: int) -> Tensor:
    """h_t = a_t * h_{t-1} + b_t along `dim`, one step after the other: a Python loop in
    eager, one ONNX Scan node (trip count = the runtime length) when traced."""
    a0, b0 = a.movedim(dim, 0), b.movedim(dim, 0)
    if torch.compiler.is_compiling():
        _, states = _scan_hop(_loop_step, torch.zeros_like(b0[0]), (a0, b0))
    else:
        state, states = torch.zeros_like(b0[0]), []
        for t in range(a0.shape[0]):
            state, y = _loop_step(state, (a0[t], b0[t]))
            states.append(y)
        states = torch.stack(states)
    return states.movedim(0, dim)


def _fill_even(a_even: Tensor, b_even: Tensor, s_odd: Tensor, dim: int) -> Tensor:
    """s_even[i] = a_even[i] * s_odd[i-1] + b_even[i], with s_odd[-1] = 0."""
    m = s_odd.shape[dim]
    rest = torch.addcmul(b_even.narrow(dim, 1, m - 1), a_even.narrow(dim, 1, m - 1), s_odd.narrow(dim, 0, m - 1))
    return torch.cat([b_even.narrow(dim, 0, 1), rest], dim)


def _contract_c(states: Tensor, c: Tensor) -> Tensor:
    """y[..., d] = sum_n c[..., n] * states[..., n, d] as one batched matmul: the
    (…, N, D) product is never materialised."""
    return torch.matmul(c.unsqueeze(-2), states).squeeze(-2)


def scan_parallel(x, delta, Bs, Cs, A, Ds, delta_bias) -> Tensor:
    """Log-depth scan over all four directions at once (see `_odd_even_scan`).

    The top level of the recursion is unrolled here: the gather lays even steps before
    odd ones, so both halves are contiguous blocks, and the results are contracted with
    C per half (N times less data) and put back in place by the merge's own index, so
    the full-size states are never interleaved. L is padded to a multiple of 8 through
    the gather (identity steps) so the three largest levels need no padding copies."""
    b, d, h, w = x.shape
    L = h * w
    Lp = L if L % 2 == 0 and L <= 8 else -(-L // 8) * 8
    if Lp == 1:
        u, dt, Bq, Cq, A4, D4, flat_out = _prepare(x, delta, Bs, Cs, A, Ds, delta_bias)
        y = _contract_c((dt * u).unsqueeze(3) * Bq.unsqueeze(-1), Cq) + D4.unsqueeze(1) * u
        return _merge(y, flat_out, h, w, x.dtype)
    u, dt, Bq, Cq, A4, D4, flat_out = _prepare(x, delta, Bs, Cs, A, Ds, delta_bias, Lp, parity_split=True)
    # in place only where nothing records the graph for a backward pass
    in_place = _in_place_ok() and not (torch.is_grad_enabled() and any(
        t.requires_grad for t in (x, delta, Bs, Cs, A, Ds, delta_bias)))
    y = _parity_split_scan(u, dt, Bq, Cq, A4, D4, in_place=in_place)
    return _merge(y, flat_out, h, w, x.dtype)


def scan_dynamic(x, delta, Bs, Cs, A, Ds, delta_bias) -> Tensor:
    """`scan_parallel` with nothing read from the grid size at trace time (for exports with
    symbolic H and W): orders from `_prepare_dynamic`, three odd-even levels on the padded
    length 8*ceil(L/8), then one loop over the remaining ceil(L/8) steps."""
    b, d, h, w = x.shape
    u, dt, Bq, Cq, A4, D4 = _prepare_dynamic(x, delta, Bs, Cs, A, Ds, delta_bias)
    y = _parity_split_scan(u, dt, Bq, Cq, A4, D4, in_place=False, depth=2)
    return _merge_dynamic(y, h, w, x.dtype)


def _parity_split_scan(u, dt, Bq, Cq, A4, D4, *, in_place: bool, depth: int | None = None) -> Tensor:
    """The scan's outputs y (B, 4, Lp, D) on steps laid out even-then-odd (Lp even); `depth`
    as in `_odd_even_scan`, for the levels below this one."""
    half = dt.shape[2] // 2
    A4 = A4.unsqueeze(1)                                                          # (4,1,N,D)
    dt_u = dt * u
    parts = []
    for sl in (slice(0, half), slice(half, None)):                                # even steps, odd steps
        dt_p = dt[:, :, sl].unsqueeze(3)                                           # (B,4,L/2,1,D)
        decay = dt_p * A4
        decay = decay.exp_() if in_place else torch.exp(decay)
        parts.append((decay, dt_u[:, :, sl].unsqueeze(3) * Bq[:, :, sl].unsqueeze(-1)))
    (a_even, b_even), (a_odd, b_odd) = parts
    c_even, c_odd = Cq[:, :, :half], Cq[:, :, half:]
    if in_place:
        b_pair = b_odd.addcmul_(a_odd, b_even)
        s_odd = _odd_even_scan(a_odd.mul_(a_even), b_pair, dim=2, in_place=True)
        b_even[:, :, 1:].addcmul_(a_even[:, :, 1:], s_odd[:, :, :-1])             # b_even now holds s_even
        y = torch.cat([_contract_c(b_even, c_even), _contract_c(s_odd, c_odd)], dim=2)
    else:
        s_odd = _odd_even_scan(a_odd * a_even, torch.addcmul(b_odd, a_odd, b_even), dim=2, depth=depth)
        # even states: step 0 is b_even[0]; the rest from the odd state before them. Each
        # piece is contracted with C before concatenating, so only (B,4,·,D) data is copied.
        s_even_rest = torch.addcmul(b_even[:, :, 1:], a_even[:, :, 1:], s_odd[:, :, :-1])
        y = torch.cat([_contract_c(b_even[:, :, :1], c_even[:, :, :1]), _contract_c(s_even_rest, c_even[:, :, 1:]),
                       _contract_c(s_odd, c_odd)], dim=2)
    return y + D4.unsqueeze(1) * u


# --------------------------------------------------------------------- selection
_AVAILABLE: dict[str, Callable[[], bool]] = {}


def scan_auto(x, delta, Bs, Cs, A, Ds, delta_bias) -> Tensor:
    """The default: our CUDA kernel for CUDA tensors when it is built and loadable,
    otherwise the parallel scan."""
    if x.is_cuda and "cuda" in _IMPLEMENTATIONS and _AVAILABLE.get("cuda", lambda: False)():
        return _IMPLEMENTATIONS["cuda"](x, delta, Bs, Cs, A, Ds, delta_bias)
    return scan_parallel(x, delta, Bs, Cs, A, Ds, delta_bias)


_IMPLEMENTATIONS: dict[str, ScanFn] = {"sequential": scan_sequential, "parallel": scan_parallel, "dynamic": scan_dynamic,
                                       "auto": scan_auto}
_DEFAULT = "auto"
_local = threading.local()


def register_scan_implementation(name: str, fn: ScanFn, available: Callable[[], bool] | None = None) -> None:
    """Make `fn` selectable as scan implementation `name` (used by tinyvim.plugins for CUDA).
    `available` tells `auto` whether it can be used here (called lazily, cache it)."""
    _IMPLEMENTATIONS[name] = fn
    if available is not None:
        _AVAILABLE[name] = available


def available_scan_implementations() -> list[str]:
    return sorted(_IMPLEMENTATIONS)


def _check_name(name: str) -> str:
    if name not in _IMPLEMENTATIONS:
        raise ValueError(f"unknown scan implementation {name!r}; choose one of "
                         f"{', '.join(available_scan_implementations())}")
    return name


def set_default_scan_implementation(name: str) -> None:
    """Process-wide default, used outside any `scan_implementation` block."""
    global _DEFAULT
    _DEFAULT = _check_name(name)


def current_scan_implementation() -> str:
    stack = getattr(_local, "stack", None)
    return stack[-1][0] if stack else _DEFAULT


def _inline() -> bool:
    stack = getattr(_local, "stack", None)
    return bool(stack) and stack[-1][1]


@contextlib.contextmanager
def scan_implementation(name: str, *, inline: bool = False) -> Iterator[None]:
    """Run the scan with implementation `name` inside the block.

    inline=True calls the implementation directly instead of through the
    `tinyvim::cross_selective_scan` op, so that tracing (a portable ONNX export with a
    traced lowering, e.g. sequential) sees its standard ops rather than one custom node."""
    _check_name(name)
    stack = getattr(_local, "stack", None)
    if stack is None:
        stack = _local.stack = []
    stack.append((name, inline))
    try:
        yield
    finally:
        stack.pop()


@contextlib.contextmanager
def scan_as_onnx_node() -> Iterator[None]:
    """Inside the block the scan is traced as the contract's one ONNX node (SCAN_PLUGIN): the
    exporter says so when it writes the plugin flavour, or the portable flavour whose scan
    tinyvim.export.scan_lowering writes out as standard ops afterwards. Said by the caller,
    not guessed from torch.onnx.is_in_onnx_export(), which any other export would trip too."""
    previous = getattr(_local, "as_node", False)
    _local.as_node = True
    try:
        yield
    finally:
        _local.as_node = previous


@torch.library.custom_op("tinyvim::cross_selective_scan", mutates_args=())
def _cross_selective_scan_op(x: Tensor, delta: Tensor, Bs: Tensor, Cs: Tensor, A: Tensor,
                             Ds: Tensor, delta_bias: Tensor) -> Tensor:
    return _IMPLEMENTATIONS[current_scan_implementation()](x, delta, Bs, Cs, A, Ds, delta_bias)


@_cross_selective_scan_op.register_fake
def _(x, delta, Bs, Cs, A, Ds, delta_bias):
    return torch.empty_like(x)


def check_scan_inputs(x, delta, Bs, Cs, A, Ds, delta_bias) -> None:
    """Shape contract of the op; raises ValueError naming the offending input."""
    if x.dim() != 4:
        raise ValueError(f"x must be (B, D, h, w), got {tuple(x.shape)}")
    b, d, h, w = x.shape
    n = A.shape[-1]
    want = {"delta": (b, 4 * d, h, w), "Bs": (b, 4, n, h, w), "Cs": (b, 4, n, h, w),
            "A": (4 * d, n), "Ds": (4 * d,), "delta_bias": (4 * d,)}
    for name, t in zip(want, (delta, Bs, Cs, A, Ds, delta_bias)):
        if tuple(t.shape) != want[name]:
            raise ValueError(f"{name} must be {want[name]} for x of shape {tuple(x.shape)}, "
                             f"got {tuple(t.shape)}")


def cross_selective_scan(x: Tensor, delta: Tensor, Bs: Tensor, Cs: Tensor, A: Tensor,
                         Ds: Tensor, delta_bias: Tensor) -> Tensor:
    """The SS2D core (see module docstring). Goes through the custom op unless an
    inline `scan_implementation` block is active."""
    if _inline():
        return _IMPLEMENTATIONS[current_scan_implementation()](x, delta, Bs, Cs, A, Ds, delta_bias)
    if getattr(_local, "as_node", False):
        return _plugin_node(x, delta, Bs, Cs, A, Ds, delta_bias)
    return torch.ops.tinyvim.cross_selective_scan(x, delta, Bs, Cs, A, Ds, delta_bias)


def _plugin_node(x, delta, Bs, Cs, A, Ds, delta_bias) -> Tensor:
    """The plugin flavour's ONNX node, written from the declared contract: op type, domain,
    plugin_version / plugin_namespace and every field (d_state = N, read from A) as the node
    attributes TensorRT's ONNX parser forwards to the creator.

    The node's tensors are float32 (the scan computes in float32 anyway): reduced-precision
    graphs get explicit casts around it."""
    spec = SCAN_PLUGIN
    attrs = spec.node_attributes(d_state=int(A.shape[1]))
    args = tuple(t.float() for t in (x, delta, Bs, Cs, A, Ds, delta_bias))
    y = torch.onnx.ops.symbolic(f"{spec.onnx_domain}::{spec.op_type}", args, attrs=attrs, dtype=torch.float32,
                                shape=x.shape, version=spec.onnx_domain_version)
    return y.to(x.dtype)
