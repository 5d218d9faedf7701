"""The `tinyvim::cross_selective_scan` op on every PyTorch 2 path: its fake kernel (strides
included), its autograd formula, opcheck's full battery, and torch.compile of a model block."""
import copy

import numpy as np
import pytest
import torch

from tinyvim.model import create_model, reparameterize
from tinyvim.model.ss2d import SS2D, DeploySS2D
from tinyvim.ops import scan_implementation, scan_sequential
from tinyvim.ops.reference import random_scan_inputs
from tinyvim.ops.scan import OP_MEMORY_FORMAT, _layout, _layout_tensors

OP = torch.ops.tinyvim.cross_selective_scan.default


def _inputs(b, d, h, w, dtype, seed, requires_grad=False, n=8):
    return tuple(torch.tensor(v, dtype=dtype, requires_grad=requires_grad)
                 for v in random_scan_inputs(b, d, h, w, n, seed=seed).values())


@pytest.mark.slow      # 15-65 s on 2 loaded cores: AOT dispatch traces forward and backward, static and dynamic
def test_opcheck_passes_every_check():
    """schema, autograd registration, fake tensor (shapes, dtypes and strides against the real
    kernel) and AOT dispatch with static and dynamic shapes, forward and backward. A fake kernel
    that returned empty_like(x) (contiguous, while the real output is channels-last) fails
    test_faketensor here; an op without register_autograd fails test_autograd_registration."""
    args = _inputs(2, 4, 3, 5, torch.float32, seed=1, requires_grad=True)
    torch.library.opcheck(OP, args)       # raises OpCheckError naming the failed check


def test_fake_kernel_declares_the_real_strides():
    args = _inputs(2, 4, 3, 5, torch.float32, seed=1)
    real = OP(*args)
    with torch._subclasses.fake_tensor.FakeTensorMode() as mode:
        fake = OP(*(mode.from_tensor(a) for a in args))
    assert real.is_contiguous(memory_format=OP_MEMORY_FORMAT)
    assert (fake.shape, fake.stride(), fake.dtype) == (real.shape, real.stride(), real.dtype)


def test_backward_matches_the_sequential_reference_and_gradcheck():
    """float64: gradcheck compares the registered formula with finite differences of the op, and
    the op's gradients equal autograd through the sequential loop (a different algorithm) to
    1e-9 relative (float64 rounding over a 6-step recurrence is ~1e-15). A tiny shape: gradcheck
    takes two forward passes per input element."""
    args = _inputs(1, 2, 2, 3, torch.float64, seed=2, requires_grad=True, n=4)
    assert torch.autograd.gradcheck(lambda *a: OP(*a), args)
    weight = torch.randn(1, 2, 2, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    grads = torch.autograd.grad((OP(*args) * weight).sum(), args)
    ref = torch.autograd.grad((scan_sequential(*args) * weight).sum(), args)
    for name, g, r in zip(("x", "delta", "Bs", "Cs", "A", "Ds", "delta_bias"), grads, ref):
        assert g.shape == r.shape and torch.allclose(g, r, rtol=1e-9, atol=1e-12 * r.abs().max()), name


def test_training_steps_through_the_op_equal_the_inline_scan():
    """Three SGD steps of an SS2D block give the same losses (and weights) through the op as
    with the scan inlined: the op's backward is the inline scan's. float32; 1e-5 relative
    covers reassociation between the two graphs over three updates."""
    torch.manual_seed(0)
    block = SS2D(32, stage=1).train()
    x = torch.randn(2, 32, 16, 16)
    target = torch.randn(2, 32, 16, 16)

    def run(module, inline):
        opt = torch.optim.SGD(module.parameters(), lr=0.5)
        losses = []
        for _ in range(3):
            ctx = scan_implementation("parallel", inline=True) if inline else scan_implementation("parallel")
            with ctx:
                loss = torch.nn.functional.mse_loss(module(x), target)
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.item())
        return losses, module

    op_losses, op_block = run(copy.deepcopy(block), inline=False)
    inline_losses, inline_block = run(copy.deepcopy(block), inline=True)
    assert np.allclose(op_losses, inline_losses, rtol=1e-5, atol=0)
    assert op_losses[2] < op_losses[0]                       # the updates reached the loss
    for a, b in zip(op_block.parameters(), inline_block.parameters()):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-6)
    assert not torch.equal(op_block.A_logs, block.A_logs)    # the scan's own parameters were trained


def test_layout_tables_are_row_major():
    """Every index table is a C-ordered constant: ExecuTorch refuses a transposed dim order
    ("Failed to map a given dim_order: [1, 0]")."""
    for h, w, lp, parity in ((7, 7, 56, True), (3, 5, 16, True), (2, 3, 6, False)):
        for table in _layout(h, w, lp, parity):
            assert table.flags["C_CONTIGUOUS"]
        for tensor in _layout_tensors(h, w, lp, parity, torch.empty(1)):
            assert tensor.is_contiguous()


@pytest.mark.slow      # 14-55 s on 2 loaded cores (Inductor's C++ codegen, caches off)
def test_torch_compile_of_a_model_block_equals_eager():
    """Inductor plans the reads after the op from its fake kernel's strides. The second SS2D of
    TinyViM-S at 64x64 (a 2x2 scan grid feeding LayerNorm and the upsampling) is where a
    contiguous-claiming fake made compile fail ("expected ... stride 1==4 ... incorrect fake
    kernel") - tried. The whole model compiles in minutes on 2 cores: bench/compile_cpu.py
    runs S/B/L at 224. float32, same kernels modulo fusion: 1e-5 absolute on O(1) outputs."""
    model = reparameterize(create_model("s")).eval()
    blocks = [m for m in model.modules() if isinstance(m, DeploySS2D)]
    block = blocks[1]
    seen = {}
    handle = block.register_forward_hook(lambda m, i, o: seen.__setitem__("x", i[0]))
    with torch.no_grad():
        model(torch.randn(1, 3, 64, 64))
    handle.remove()
    torch._dynamo.reset()
    # no compile caches: a graph cached under another fake kernel would be reused as is
    with torch.no_grad(), torch._inductor.config.patch(fx_graph_cache=False), \
            torch._functorch.config.patch(enable_autograd_cache=False):
        eager = block(seen["x"])
        compiled = torch.compile(block)(seen["x"])
    assert (compiled - eager).abs().max() <= 1e-5
