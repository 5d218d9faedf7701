"""The network: official key layout, parameter counts, MACs, input checks."""
import pytest
import torch

import tinyvim
from tinyvim.errors import TinyvimError
from tinyvim.model import count_parameters
from tinyvim.model.complexity import count_macs, ss2d_table

# Parameter counts of the official release's checkpoints, with / without dist_head.
OFFICIAL_PARAMS = {"s": (5_909_084, 5_684_084), "b": (11_514_236, 11_129_236), "l": (32_380_256, 31_867_256)}
PAPER_GMACS = {"s": 0.9, "b": 1.5, "l": 4.7}
D_INNER = {"s": [12, 32, 84, 84, 168], "b": [12, 48, 96, 96, 288], "l": [16, 64, 192, 192, 384]}


@pytest.mark.parametrize("variant", "sbl")
def test_parameter_counts_match_official_release(variant):
    m = tinyvim.create_model(variant)
    with_dist, without = OFFICIAL_PARAMS[variant]
    assert count_parameters(m) == with_dist
    assert count_parameters(m) - count_parameters(m.dist_head) == without


@pytest.mark.parametrize("variant", "sbl")
def test_gmacs_match_paper(variant):
    m = tinyvim.create_model(variant)
    assert round(count_macs(m) / 1e9, 1) == PAPER_GMACS[variant]


@pytest.mark.parametrize("variant", "sbl")
def test_ss2d_layout(variant):
    rows = ss2d_table(tinyvim.create_model(variant))
    assert [r["d_inner"] for r in rows] == D_INNER[variant]
    assert {r["scan_grid"] for r in rows} == {"7x7"}          # every scan is 7×7 at 224
    assert [r["pool"] for r in rows] == [8, 4, 2, 2, 1]
    assert {r["scan_grid"] for r in ss2d_table(tinyvim.create_model(variant), (256, 256))} == {"8x8"}


def test_official_key_names_and_shapes():
    sd = tinyvim.create_model("s").state_dict()
    expected = {
        "patch_embed.0.c.weight": (24, 3, 3, 3),
        "patch_embed.2.bn.running_var": (48,),
        "network.0.0.dwconv.conv.c.weight": (48, 1, 3, 3),
        "network.0.0.dwconv.conv1.bias": (48,),
        "network.0.0.dwconv.bn.num_batches_tracked": (),
        "network.0.0.mlp.fc1.c.weight": (192, 48, 1, 1),
        "network.0.0.layer_scale": (48, 1, 1),
        "network.1.proj.c.weight": (64, 48, 3, 3),
        "network.0.2.op.in_proj.c.weight": (48, 48, 1, 1),
        "network.0.2.op.conv2d.dwconv_w.conv.c.weight": (24, 1, 7, 1),
        "network.0.2.op.conv2d.dwconv_h.conv.c.weight": (24, 1, 1, 7),
        "network.0.2.op.local_conv.conv.c.weight": (36, 1, 3, 3),
        "network.0.2.op.x_proj_weight": (4, 3 + 16, 12),
        "network.0.2.op.dt_projs_weight": (4, 12, 3),
        "network.0.2.op.dt_projs_bias": (4, 12),
        "network.0.2.op.A_logs": (48, 8),
        "network.0.2.op.Ds": (48,),
        "network.0.2.op.out_norm.weight": (12,),
        "network.0.2.op.out_proj.bn.weight": (48,),
        "network.4.4.op.x_proj_weight": (4, 11 + 16, 84),
        "network.6.5.op.A_logs": (4 * 168, 8),
        "norm.running_mean": (224,),
        "head.weight": (1000, 224),
        "dist_head.bias": (1000,),
    }
    for key, shape in expected.items():
        assert tuple(sd[key].shape) == shape, key
    # TViM blocks sit at the end of each stage and in the middle of stage 3, nowhere else.
    tvim = sorted({k.split(".op.")[0] for k in sd if ".op." in k})
    assert tvim == ["network.0.2", "network.2.2", "network.4.4", "network.4.8", "network.6.5"]


def test_backbone_has_four_normed_outputs_with_strides_4_to_32():
    m = tinyvim.create_model("s", backbone=True)
    assert not any(k.startswith(("head.", "dist_head.", "norm.")) for k in m.state_dict())
    with torch.no_grad():
        feats = m(torch.randn(1, 3, 256, 320))
    assert [tuple(f.shape) for f in feats] == [(1, 48, 64, 80), (1, 64, 32, 40), (1, 168, 16, 20), (1, 224, 8, 10)]


def test_random_init_is_deterministic_per_seed():
    a, b, c = (tinyvim.create_model("s", seed=s).state_dict() for s in (0, 0, 1))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["head.weight"], c["head.weight"])


def test_eval_mode_and_training_returns_both_heads():
    m = tinyvim.create_model("s")
    assert not m.training
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        eval_out = m(x)
        m.train()
        for mod in m.modules():          # keep BN on running stats so only the head logic differs
            if isinstance(mod, torch.nn.BatchNorm2d):
                mod.eval()
        head, dist = m(x)
    assert torch.allclose(eval_out, (head + dist) / 2, atol=1e-4)


@pytest.mark.parametrize("size", [(230, 230), (224, 200), (16, 16)])
def test_input_not_divisible_by_32_fails_before_compute(size):
    m = tinyvim.create_model("s")
    with pytest.raises(TinyvimError, match=rf"{size[0]}x{size[1]} is not divisible by 32"):
        m(torch.randn(1, 3, *size))


def test_unknown_variant():
    with pytest.raises(TinyvimError, match="unknown variant 'xl'"):
        tinyvim.create_model("xl")
