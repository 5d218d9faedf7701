"""Re-parameterization: every fusion tinyvim.model makes (conv+BN, RepDW, Rep_Inception, FFN, the
heads), exact to float32 round-off."""
import pytest
import torch
from torch import nn

import tinyvim
from helpers import make_model
from tinyvim.model import count_parameters

# Fused and unfused compute the same function with differently ordered float32
# arithmetic (BN folded into weights, 1×1 and identity folded into 3×3 kernels). Logits
# are O(1); per-layer relative round-off ~1e-7 through ~25 residual blocks stays well
# under 1e-5 (the acceptance bound). In float64 the same comparison must agree to 1e-10,
# which would catch any fusion that is only approximately right.
ATOL_FP32 = 1e-5
ATOL_FP64 = 1e-10


# Fusion is per layer and size-blind; 256 (8x8 in the last stage) once, on S, is enough to cover
# a grid other than 224's - B and L at 256 repeated S's check at 4x the suite time.
@pytest.mark.parametrize("variant,size", [("s", 224), ("s", 256), ("b", 224), ("l", 224)])
def test_fused_matches_unfused(variant, size):
    model = make_model(variant)
    fused = tinyvim.reparameterize(model)
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad(), tinyvim.scan_implementation("sequential"):
        ref = model(x)
    with torch.no_grad(), tinyvim.scan_implementation("parallel"):
        out = fused(x)
    assert ref.abs().max() > 0.05                     # non-trivial logits
    assert (out - ref).abs().max().item() <= ATOL_FP32


@pytest.mark.parametrize("variant", "sb")
def test_fused_matches_unfused_in_float64(variant):
    model = make_model(variant).double()
    fused = tinyvim.reparameterize(model)
    # 128x128: float64 is for the fusion's arithmetic, which no map size changes (the fp32 case
    # above runs the model's own 224); a quarter of the pixels keeps B's float64 run short
    x = torch.randn(1, 3, 128, 128, dtype=torch.float64)
    with torch.no_grad():
        assert (fused(x) - model(x)).abs().max().item() <= ATOL_FP64


def test_backbone_fuses_and_matches():
    model = make_model("s", backbone=True)
    fused = tinyvim.reparameterize(model)
    x = torch.randn(1, 3, 256, 256)
    with torch.no_grad():
        for a, b in zip(model(x), fused(x)):
            # feature maps are not averaged like logits (|a| up to ~10): bound relative to their scale
            assert (a - b).abs().max().item() <= ATOL_FP32 * max(1.0, a.abs().max().item())


@pytest.mark.parametrize("variant", "sbl")
def test_no_batchnorm_left_and_fewer_parameters(variant):
    model = make_model(variant)
    fused = tinyvim.reparameterize(model)
    assert not any(isinstance(m, (nn.BatchNorm2d, nn.BatchNorm1d)) for m in fused.modules())
    assert count_parameters(fused) < count_parameters(model) - count_parameters(model.dist_head)
    # layer_scale folded into fc2, the two heads into one Linear
    assert not any("layer_scale" in k or "dist_head" in k for k in fused.state_dict())
    assert sum(isinstance(m, nn.Linear) for m in fused.modules()) == 1


def test_input_model_is_left_untouched():
    model = make_model("s")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    modules_before = [type(m) for m in model.modules()]
    tinyvim.reparameterize(model)
    assert [type(m) for m in model.modules()] == modules_before
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_model_without_dist_head_fuses_to_head_alone():
    model = make_model("s")
    model.dist_head = None
    fused = tinyvim.reparameterize(model)
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        assert (fused(x) - model(x)).abs().max().item() <= ATOL_FP32
