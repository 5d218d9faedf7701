"""ONNX export: both flavours against PyTorch, the graph's promises, metadata, atomicity."""
import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

import tinyvim
from helpers import make_model
from tinyvim.errors import TinyvimError
from tinyvim.contract import InputSpec, ModelSpec
from tinyvim.export import export_onnx, read_metadata
from tinyvim.backends.ort.custom_ops import plugin_session

# ORT vs PyTorch fp32: same function, different kernels and summation order; observed
# ~5e-7 on logits of magnitude ~1. 5e-5 is the acceptance bound.
ATOL = 5e-5


def _ort(path, threads=2):
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def _torch_ref(model, x):
    """The original computation: unfused model, sequential scan, float32."""
    with torch.no_grad(), tinyvim.scan_implementation("sequential"):
        out = model(torch.from_numpy(x))
    return [o.numpy() for o in out] if isinstance(out, tuple) else [out.numpy()]


def _images(batch, size=224, seed=0):
    return np.random.default_rng(seed).standard_normal((batch, 3, size, size)).astype(np.float32)


@pytest.fixture(scope="module")
def model_s():
    return make_model("s")


@pytest.fixture(scope="module")
def portable_s(tmp_path_factory, model_s):
    path = tmp_path_factory.mktemp("onnx") / "s.onnx"
    return export_onnx(path, ModelSpec("s"), InputSpec(batch=None), network=model_s)


@pytest.fixture(scope="module")
def plugin_s(tmp_path_factory, model_s):
    """Exported with a checkpoint named (model_s's own weights): the same file is the plugin graph
    and the checkpoint-metadata case (an export is ~10 s whatever the size; one fewer here)."""
    folder = tmp_path_factory.mktemp("onnx")
    torch.save({"model": model_s.state_dict()}, folder / "m.pth")
    return export_onnx(folder / "s_plugin.onnx", ModelSpec("s", checkpoint=folder / "m.pth"), InputSpec(batch=None),
                       scan="plugin", network=model_s)


def test_portable_graph_is_standard_onnx_with_names_and_metadata(portable_s):
    proto = onnx.load(str(portable_s.path))
    onnx.checker.check_model(proto, full_check=True)
    assert {n.domain for n in proto.graph.node} <= {"", "ai.onnx"}
    # the scan is written as nodes from constant orders at a fixed size: no loop, no shape ops
    assert not {"Scan", "Shape", "GatherND"} & set(portable_s.op_counts)
    assert [i.name for i in proto.graph.input] == ["images"]
    assert [o.name for o in proto.graph.output] == ["logits"]
    meta = read_metadata(proto)
    assert meta.variant == "s" and meta.scan == "portable" and meta.dynamic_batch
    assert meta.input_size == (224, 224) and meta.opset == 20 and meta.tinyvim_version == tinyvim.__version__
    assert meta.mean == (0.485, 0.456, 0.406) and meta.checkpoint_sha256 == ""
    props = {p.key: p.value for p in proto.metadata_props}          # the text form, as other tools see it
    assert props["batch"] == "dynamic" and props["input_size"] == "224x224" and props["opset"] == "20"
    assert portable_s.num_nodes == len(proto.graph.node) == sum(portable_s.op_counts.values())


@pytest.mark.parametrize("batch", [1, 3, 17])   # 17: past the usual 8/16 profile sizes, odd
def test_portable_matches_pytorch_for_any_batch(portable_s, model_s, batch):
    x = _images(batch, seed=batch)
    out = _ort(portable_s.path).run(None, {"images": x})[0]
    ref = _torch_ref(model_s, x)[0]
    assert out.shape == (batch, 1000)
    assert np.abs(out - ref).max() <= ATOL


def test_plugin_graph_has_five_scan_nodes_and_matches(plugin_s, portable_s, model_s):
    proto = onnx.load(str(plugin_s.path))
    custom = [n for n in proto.graph.node if n.domain not in ("", "ai.onnx")]
    assert len(custom) == 5
    inits = {i.name for i in proto.graph.initializer}
    for node in custom:
        assert (node.domain, node.op_type) == ("tinyvim", "CrossSelectiveScan")
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        assert attrs["plugin_version"] == b"1" and attrs["plugin_namespace"] == b"tinyvim"
        assert list(node.input[4:]) and all(name in inits for name in node.input[4:])   # A, Ds, delta_bias
    assert {o.domain: o.version for o in proto.opset_import}["tinyvim"] == 1
    x = _images(2, seed=7)
    out = plugin_session(plugin_s.path).run(None, {"images": x})[0]
    assert np.abs(out - _torch_ref(model_s, x)[0]).max() <= ATOL
    assert np.abs(out - _ort(portable_s.path).run(None, {"images": x})[0]).max() <= ATOL


@pytest.mark.parametrize("variant", ["b", "l"])
def test_other_variants_match(tmp_path, variant):
    # 64x64 (2x2 in the last stage): B and L differ from S in widths and depths, which no map size
    # changes; the S exports above run the model's own 224
    model = make_model(variant)
    result = export_onnx(tmp_path / f"{variant}.onnx", ModelSpec(variant), InputSpec((64, 64), 2), network=model)
    x = _images(2, size=64, seed=3)
    assert np.abs(_ort(result.path).run(None, {"images": x})[0] - _torch_ref(model, x)[0]).max() <= ATOL


def test_256_input(tmp_path, model_s):
    result = export_onnx(tmp_path / "s256.onnx", ModelSpec("s"), InputSpec((256, 256), 2), network=model_s)
    assert read_metadata(result.path).input_size == (256, 256)
    x = _images(2, size=256)
    assert np.abs(_ort(result.path).run(None, {"images": x})[0] - _torch_ref(model_s, x)[0]).max() <= ATOL


def test_backbone_exports_four_feature_maps(tmp_path):
    model = make_model("s", backbone=True)
    result = export_onnx(tmp_path / "bb.onnx", ModelSpec("s", backbone=True), InputSpec((256, 256), 2), network=model)
    assert result.output_names == ["feat0", "feat1", "feat2", "feat3"]
    x = _images(2, size=256)
    outs = _ort(result.path).run(None, {"images": x})
    for out, ref in zip(outs, _torch_ref(model, x)):
        assert out.shape == ref.shape
        assert np.abs(out - ref).max() <= ATOL * max(1.0, np.abs(ref).max())   # maps are O(10), not averaged


def test_fp16_export_keeps_fp32_io_and_is_close(tmp_path, model_s):
    # 64x64: half precision is per layer, whatever the map size (the reference's 224 run was most of the time)
    result = export_onnx(tmp_path / "s16.onnx", ModelSpec("s"), InputSpec((64, 64), 2), precision="fp16",
                         network=model_s)
    proto = onnx.load(str(result.path))
    assert proto.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    inits = [i for i in proto.graph.initializer if i.data_type == onnx.TensorProto.FLOAT16]
    assert len(inits) > 50                      # the weights really are half precision
    x = _images(2, size=64, seed=1)
    out = _ort(result.path).run(None, {"images": x})[0]
    ref = _torch_ref(model_s, x)[0]
    # fp16 weights/activations: ~1e-3 relative per layer; logits O(1) -> bound 5e-2 absolute
    assert np.abs(out - ref).max() <= 5e-2
    assert (out.argmax(1) == ref.argmax(1)).all()


def test_checkpoint_hash_in_metadata(plugin_s):
    ckpt = plugin_s.path.parent / "m.pth"
    meta = read_metadata(plugin_s.path)
    import hashlib
    assert meta.checkpoint_sha256 == hashlib.sha256(ckpt.read_bytes()).hexdigest()
    assert meta.checkpoint.endswith("m.pth")


def test_failed_export_leaves_no_file(tmp_path, monkeypatch, model_s, plugin_s):
    target = tmp_path / "out.onnx"
    target.write_bytes(b"previous good file")

    def broken_check(*args, **kwargs):
        raise onnx.checker.ValidationError("simulated failure")
    monkeypatch.setattr(onnx.checker, "check_model", broken_check)
    # the failure under test comes after the graph is made: the trace is replaced by the module's
    # plugin export (the clean-up, metadata and the atomic write still run for real)
    from tinyvim.export import onnx_export
    monkeypatch.setattr(onnx_export, "_torch_export", lambda *a, **k: onnx.load(str(plugin_s.path)))
    with pytest.raises(onnx.checker.ValidationError):
        export_onnx(target, ModelSpec("s"), scan="plugin", network=model_s)
    assert target.read_bytes() == b"previous good file"
    assert [p.name for p in tmp_path.iterdir()] == ["out.onnx"]


@pytest.mark.parametrize("make,match", [
    (lambda: dict(inputs=InputSpec((230, 230))), "230x230 is not divisible by 32"),
    (lambda: dict(scan="magic"), "unknown --scan 'magic'"),
    (lambda: dict(opset=11), "--opset 11 is too old"),
    (lambda: dict(inputs=InputSpec(batch=0)), "--batch must be an integer from 1 to 4096"),
])
def test_bad_arguments(tmp_path, make, match):
    with pytest.raises(TinyvimError, match=match):      # the specs check themselves when made
        export_onnx(tmp_path / "x.onnx", **make())
    assert not (tmp_path / "x.onnx").exists()


def test_unwritable_output_is_a_one_line_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(TinyvimError, match=r"cannot write .*out\.onnx.*choose another output path"):
        export_onnx(blocker / "out.onnx", scan="plugin")


@pytest.mark.parametrize("argv", [["--fmt", "onnx"], ["--fmt", "triton", "--triton-backend", "onnxruntime"]])
def test_export_arguments_are_worked_out_once_per_cli_export(argv, tmp_path, monkeypatch):
    """The command's boundary (plan_export, or the triton branch) and export_onnx both meet the
    argument check; its body runs once (the second answer is the first's). The model build is
    stopped at once: only the checks run."""
    from click.testing import CliRunner

    from tinyvim.cli import cli
    from tinyvim.export import onnx_export
    runs = []
    monkeypatch.setattr(onnx_export, "check_scan", lambda scan: runs.append(scan))
    onnx_export._checked_opset.cache_clear()

    def stop(model):
        raise TinyvimError("stopped where the model would be built")
    monkeypatch.setattr(onnx_export, "with_checkpoint_digest", stop)
    r = CliRunner().invoke(cli, ["export", *argv, "--img-size", "64", "-o", str(tmp_path / "out")])
    assert r.exit_code == 2 and "stopped where the model would be built" in r.output, r.output
    assert runs == ["portable"]
    onnx_export._checked_opset.cache_clear()


def test_a_refused_opset_is_refused_every_time_and_pt2_names_its_own_rule(tmp_path):
    from click.testing import CliRunner

    from tinyvim.cli import cli
    for _ in range(2):      # a refusal is never the cache's answer
        r = CliRunner().invoke(cli, ["export", "--opset", "99", "-o", str(tmp_path / "x.onnx")])
        assert r.exit_code == 2 and "--opset 99 is newer than this installation exports" in r.output, r.output
    r = CliRunner().invoke(cli, ["export", "--fmt", "pt2", "--opset", "99", "-o", str(tmp_path / "x.pt2")])
    assert r.exit_code == 2 and "--opset applies to the ONNX formats" in r.output, r.output
    assert list(tmp_path.iterdir()) == []
