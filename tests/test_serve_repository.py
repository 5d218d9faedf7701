"""`export --fmt triton` without a server: config.pbtxt for the onnxruntime, tensorrt and
python backends, parsed back with Triton's own ModelConfig protobuf (tritonclient ships it)
and checked field by field; the model files in the version folder; the settings' checks.

The model here is a small stand-in ONNX with TinyViM's signature and real export metadata
(the writer reads only the graph's inputs/outputs and the metadata): the TinyViM export
itself is served by a real tritonserver in tests/test_serve_server.py."""
from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from serve_helpers import SIZE_64, fake_export, hidden_entries, stand_in_onnx

from tinyvim.cli import cli
from tinyvim.contract import TRITON_PYTHON_PARAMS, ExportMetadata
from tinyvim.backends.trt.sidecar import make_sidecar
from tinyvim.errors import TinyvimError
from tinyvim.serve.repository import PYTHON_MODEL_SOURCE, TritonSettings, write_repository
from tinyvim.serve.server import free_port
from tinyvim.utils import file_sha256

model_config_pb2 = pytest.importorskip(
    "tritonclient.grpc.model_config_pb2",
    reason="the serve extra is not installed (pip install 'tinyvim[serve]'): Triton's ModelConfig proto comes with it")
from google.protobuf import text_format  # noqa: E402  (protobuf comes with tritonclient[grpc])

def parse_config(path: Path):
    """config.pbtxt through protobuf's strict text parser: an unknown field, a wrong enum value
    or a type error raises."""
    return text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())


FP32 = model_config_pb2.TYPE_FP32
KIND_CPU, KIND_GPU = model_config_pb2.ModelInstanceGroup.KIND_CPU, model_config_pb2.ModelInstanceGroup.KIND_GPU


def test_onnxruntime_config_parses_back_with_every_setting(tmp_path):
    onnx_path = stand_in_onnx(tmp_path / "s.onnx")
    settings = TritonSettings(backend="onnxruntime", model_name="tv_ort", version=3, max_batch_size=16,
                              preferred_batch_sizes=(8, 4), max_queue_delay_us=1500, instances=2, threads=3,
                              accelerator="openvino")
    result = write_repository(tmp_path / "repo", settings, onnx=onnx_path)
    cfg = parse_config(result.config_path)
    assert (cfg.name, cfg.backend, cfg.max_batch_size) == ("tv_ort", "onnxruntime", 16)
    assert cfg.default_model_filename == "model.onnx"
    assert [(i.name, i.data_type, list(i.dims)) for i in cfg.input] == [("images", FP32, [3, 64, 64])]
    assert [(o.name, o.data_type, list(o.dims)) for o in cfg.output] == [("logits", FP32, [1000])]
    assert list(cfg.dynamic_batching.preferred_batch_size) == [4, 8]
    assert cfg.dynamic_batching.max_queue_delay_microseconds == 1500
    assert [(g.count, g.kind) for g in cfg.instance_group] == [(2, KIND_CPU)]
    assert list(cfg.version_policy.specific.versions) == [3]
    assert {k: v.string_value for k, v in cfg.parameters.items()} == {"intra_op_thread_count": "3",
                                                                      "inter_op_thread_count": "1"}
    accel = cfg.optimization.execution_accelerators
    assert [a.name for a in accel.cpu_execution_accelerator] == ["openvino"] and not accel.gpu_execution_accelerator
    # the version folder holds the ONNX, byte for byte, and nothing else
    assert sorted(p.name for p in (result.model_dir / "3").iterdir()) == ["model.onnx"]
    assert file_sha256(result.model_dir / "3" / "model.onnx") == file_sha256(onnx_path)
    # the description Triton ignores but people read: the export's metadata
    assert "TinyViM-S classifier 64x64, portable scan, fp32" in result.config_path.read_text()


def test_tensorrt_config_parses_back_and_carries_the_plan_with_its_notes(tmp_path):
    onnx_path = stand_in_onnx(tmp_path / "s.onnx", scan="plugin")
    engine = tmp_path / "s.engine"
    engine.write_bytes(b"not a real plan: the writer copies it and reads its sidecar")
    sidecar = make_sidecar(tinyvim_version="0.1.0", trt_version="10.16.0", gpu={"name": "NVIDIA H100",
                           "compute_capability": "9.0"}, precision="fp16",
                           profiles=[{"images": {"min": [1, 3, 64, 64], "opt": [8, 3, 64, 64],
                                                 "max": [16, 3, 64, 64]}}],
                           onnx_path=str(onnx_path), onnx_sha256=file_sha256(onnx_path),
                           onnx_metadata=ExportMetadata(variant="s", input_size=SIZE_64, batch=None,
                                                        scan="plugin").to_props(),
                           build_seconds=1.0, strongly_typed=False, plugin="/x/libtinyvim_trt_plugin.so")
    Path(str(engine) + ".json").write_text(json.dumps(sidecar))
    result = write_repository(tmp_path / "repo", TritonSettings(backend="tensorrt", max_batch_size=16,
                                                                instances=2), engine=engine)
    cfg = parse_config(result.config_path)
    assert (cfg.name, cfg.backend, cfg.max_batch_size, cfg.default_model_filename) == \
        ("tinyvim", "tensorrt", 16, "model.plan")
    assert [(i.name, i.data_type, list(i.dims)) for i in cfg.input] == [("images", FP32, [3, 64, 64])]
    assert [(o.name, list(o.dims)) for o in cfg.output] == [("logits", [1000])]
    assert [(g.count, g.kind) for g in cfg.instance_group] == [(2, KIND_GPU)]
    assert cfg.dynamic_batching.max_queue_delay_microseconds == TritonSettings().max_queue_delay_us
    assert not cfg.parameters and not cfg.optimization.execution_accelerators.gpu_execution_accelerator
    version = result.model_dir / "1"
    assert (version / "model.plan").read_bytes() == engine.read_bytes()
    assert json.loads((version / "model.plan.json").read_text()) == sidecar
    text = result.config_path.read_text()
    assert "TensorRT 10.16.0 on NVIDIA H100 (compute capability 9.0)" in text
    assert "LD_PRELOAD=" in text and "CrossSelectiveScan" in text


@pytest.mark.parametrize("profile, message", [((2, 16), "takes batch 2..16"), ((1, 4), "takes batch 1..4")])
def test_tensorrt_plan_whose_profile_misses_triton_batches_is_refused(tmp_path, profile, message):
    onnx_path = stand_in_onnx(tmp_path / "s.onnx")
    engine = tmp_path / "s.engine"
    engine.write_bytes(b"plan")
    sidecar = make_sidecar(tinyvim_version="0.1.0", trt_version="10.16.0", gpu={"name": "G", "compute_capability":
                           "9.0"}, precision="fp32", profiles=[{"images": {"min": [profile[0], 3, 64, 64],
                                                                          "opt": [profile[1], 3, 64, 64],
                                                                          "max": [profile[1], 3, 64, 64]}}],
                           onnx_path=str(onnx_path), onnx_sha256=file_sha256(onnx_path),
                           onnx_metadata=ExportMetadata(variant="s", input_size=SIZE_64, batch=None).to_props(),
                           build_seconds=1.0, strongly_typed=False, plugin=None)
    Path(str(engine) + ".json").write_text(json.dumps(sidecar))
    with pytest.raises(TinyvimError, match=message) as info:
        write_repository(tmp_path / "repo", TritonSettings(backend="tensorrt", max_batch_size=8), engine=engine)
    assert "build-engine --min-batch 1 --max-batch 8" in str(info.value)
    # nothing written: no repository, no staging folder beside it
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.engine", "s.engine.json", "s.onnx"]


def test_python_backend_folder_and_parameters_match_the_model_file(tmp_path):
    result = write_repository(tmp_path / "repo", TritonSettings(threads=2), onnx=stand_in_onnx(tmp_path / "s.onnx"))
    cfg = parse_config(result.config_path)
    assert (cfg.backend, cfg.max_batch_size, cfg.default_model_filename) == ("python", 8, "")
    params = {k: v.string_value for k, v in cfg.parameters.items()}
    assert params == {TRITON_PYTHON_PARAMS["runtime"]: "onnxruntime", TRITON_PYTHON_PARAMS["onnx_file"]: "model.onnx",
                      TRITON_PYTHON_PARAMS["threads"]: "2"}
    assert (result.model_dir / "1" / "model.py").read_text() == PYTHON_MODEL_SOURCE.read_text()
    # the model file cannot import tinyvim: its own spelling of the parameter names must be the contract's
    tree = ast.parse(PYTHON_MODEL_SOURCE.read_text())
    constants = {t.id: n.value.value for n in tree.body if isinstance(n, ast.Assign) for t in n.targets
                 if isinstance(t, ast.Name) and t.id.startswith("PARAM_")}
    assert constants == {"PARAM_RUNTIME": TRITON_PYTHON_PARAMS["runtime"],
                         "PARAM_ONNX_FILE": TRITON_PYTHON_PARAMS["onnx_file"],
                         "PARAM_THREADS": TRITON_PYTHON_PARAMS["threads"]}


def test_fixed_batch_export_serves_without_batching_and_refuses_batching(tmp_path):
    fixed = stand_in_onnx(tmp_path / "s4.onnx", batch=4)
    with pytest.raises(TinyvimError, match="fixed batch of 4.*--dynamic-batch"):
        write_repository(tmp_path / "repo", TritonSettings(max_batch_size=8), onnx=fixed)
    result = write_repository(tmp_path / "repo", TritonSettings(backend="onnxruntime", max_batch_size=0), onnx=fixed)
    cfg = parse_config(result.config_path)
    assert cfg.max_batch_size == 0 and not cfg.HasField("dynamic_batching")
    assert list(cfg.input[0].dims) == [4, 3, 64, 64] and list(cfg.output[0].dims) == [4, 1000]


def test_rewriting_a_model_replaces_it_whole(tmp_path):
    onnx_path = stand_in_onnx(tmp_path / "s.onnx")
    repo = tmp_path / "repo"
    write_repository(repo, TritonSettings(), onnx=onnx_path)
    (repo / "tinyvim" / "1" / "stale.txt").write_text("left from before")
    result = write_repository(repo, TritonSettings(backend="onnxruntime", max_batch_size=4), onnx=onnx_path)
    assert parse_config(result.config_path).max_batch_size == 4
    assert sorted(p.name for p in (repo / "tinyvim" / "1").iterdir()) == ["model.onnx"]
    assert [p.name for p in repo.iterdir()] == ["tinyvim"]      # no staging or old folders left
    assert hidden_entries(tmp_path) == []                         # beside the repository neither


@pytest.mark.parametrize("settings, message", [
    (dict(backend="tensorrt", instance_kind="cpu"), "runs on a GPU only"),
    (dict(backend="onnxruntime", accelerator="openvino", instance_kind="gpu"), "use --instance-kind cpu"),
    (dict(accelerator="openvino"), "onnxruntime only"),
    (dict(max_batch_size=4, preferred_batch_sizes=(8,)), r"\[8\] must lie in 1..--max-batch-size \(4\)"),
    (dict(model_name="../x"), "--model-name"),
    (dict(instances=0), "--instances must be 1..64"),
])
def test_settings_that_triton_would_refuse_are_one_line_errors(settings, message):
    with pytest.raises(TinyvimError, match=message):
        TritonSettings(**settings).check()


def test_plugin_export_needs_the_tensorrt_backend(tmp_path):
    with pytest.raises(TinyvimError, match="only TensorRT runs"):
        write_repository(tmp_path / "repo", TritonSettings(), onnx=stand_in_onnx(tmp_path / "p.onnx", scan="plugin"))


@pytest.mark.parametrize("args, message", [
    (["--max-batch-size", "4"], "--max-batch-size apply to --fmt triton only"),
    (["--fmt", "triton", "--batch", "4"], "--batch 4: with --fmt triton the batch is dynamic"),
    (["--fmt", "triton", "--triton-backend", "onnxruntime", "--python-runtime", "openvino"],
     "--python-runtime applies to --triton-backend python only"),
    # conflicts the writer used to find only in the exported file, after the export
    (["--fmt", "triton", "--max-batch-size", "0", "--dynamic-batch"],
     "--dynamic-batch with --max-batch-size 0: without Triton batching"),
    (["--fmt", "triton", "--scan", "plugin"], "--scan plugin puts CrossSelectiveScan nodes in the ONNX"),
    (["--fmt", "triton", "--preferred-batch-sizes", "4,x"], "--preferred-batch-sizes must be a comma-separated"),
])
def test_export_cli_option_mistakes_are_one_line_errors_before_any_export(tmp_path, monkeypatch, args, message):
    calls = []
    fake_export(monkeypatch, calls)
    result = CliRunner().invoke(cli, ["export", "-o", str(tmp_path / "out"), *args])
    assert result.exit_code == 2, result.output
    assert message in result.output and "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) <= 2      # the random-weights note, the error
    assert calls == [] and list(tmp_path.iterdir()) == []


def test_triton_options_are_declared_once_for_the_cli_and_the_settings(monkeypatch, tmp_path):
    """Every option of the table is an `export` option and sets its TritonSettings field: a value
    other than the default given on the command line arrives in config.pbtxt's settings."""
    from tinyvim.serve.settings import TRITON_OPTIONS

    help_text = CliRunner().invoke(cli, ["export", "--help"], terminal_width=200).output
    assert all(o.flag in help_text for o in TRITON_OPTIONS)
    values = {"--triton-backend": "onnxruntime", "--model-name": "m", "--max-batch-size": "4",
              "--preferred-batch-sizes": "2,4", "--max-queue-delay-us": "7", "--instances": "3",
              "--instance-kind": "cpu", "--intra-op-threads": "2", "--ort-accelerator": "openvino"}
    fake_export(monkeypatch)
    args = [x for flag, value in values.items() for x in (flag, value)]
    result = CliRunner().invoke(cli, ["export", "--fmt", "triton", "--img-size", "64", "-o", str(tmp_path / "r"),
                                      "--json", str(tmp_path / "r.json"), *args])
    assert result.exit_code == 0, result.output
    settings = json.loads((tmp_path / "r.json").read_text())["settings"]
    expected = {"backend": "onnxruntime", "model_name": "m", "max_batch_size": 4, "preferred_batch_sizes": [2, 4],
                "max_queue_delay_us": 7, "instances": 3, "instance_kind": "cpu", "threads": 2,
                "accelerator": "openvino"}
    assert {k: settings[k] for k in expected} == expected
    # every settings option was exercised (the two left are the python backend's and the plan's)
    assert {o.flag for o in TRITON_OPTIONS} - set(values) == {"--python-runtime", "--engine"}


def test_disk_full_while_writing_is_one_line_and_leaves_nothing(tmp_path, monkeypatch):
    import errno
    import shutil as real_shutil

    from tinyvim.serve import repository

    def copyfile(src, dst, **kwargs):   # as sendfile reports it: the source's name first
        if str(dst).endswith("model.py"):
            raise OSError(errno.ENOSPC, "No space left on device", str(src), None, str(dst))
        return real_shutil.copyfile(src, dst, **kwargs)

    monkeypatch.setattr(repository.shutil, "copyfile", copyfile)
    fake_export(monkeypatch)
    result = CliRunner().invoke(cli, ["export", "--fmt", "triton", "--img-size", "64", "-o", str(tmp_path / "r")])
    assert result.exit_code == 2 and "Traceback" not in result.output, result.output
    assert result.output.strip().splitlines()[-1] == (
        f"error: cannot write the model repository {tmp_path / 'r'}: No space left on device "
        "(free some space or choose another -o)")
    assert list(tmp_path.iterdir()) == []


def test_a_killed_exports_staging_folder_is_swept_and_a_live_ones_kept(tmp_path):
    import subprocess

    from tinyvim.serve.repository import remove_stale_staging
    from tinyvim.utils import TEMP_MARK, temp_tag

    repo = tmp_path / "repo"
    write_repository(repo, TritonSettings(), onnx=stand_in_onnx(tmp_path / "s.onnx"))
    gone = subprocess.Popen(["true"])
    gone.wait()                                            # a PID that has ended
    host, _, rand = temp_tag().split("-")
    dead = [tmp_path / f".repo.tinyvim.{host}-{gone.pid}-{rand}{TEMP_MARK}",     # beside (the usual place)
            repo / f".repo.tinyvim.{host}-{gone.pid}-{rand}{TEMP_MARK}"]         # inside (mount-point fallback)
    live = tmp_path / f".repo.tinyvim.{host}-1-{rand}{TEMP_MARK}"                   # PID 1 runs
    foreign = repo / ".tinyvim.abcd1234"                                         # not ours: no tag
    for folder in (*dead, live, foreign):
        (folder / "model" / "1").mkdir(parents=True)
    write_repository(repo, TritonSettings(), onnx=tmp_path / "s.onnx")
    assert not any(d.exists() for d in dead) and live.is_dir() and foreign.is_dir()
    assert remove_stale_staging(tmp_path) == []


def test_repository_on_another_filesystem_stages_inside_hidden(tmp_path, monkeypatch):
    """Beside the repository is not the same filesystem (a mount point): stage inside, hidden,
    and leave nothing there afterwards."""
    from tinyvim.serve import repository

    repo = tmp_path / "repo"
    repo.mkdir()
    seen = []
    real_staging = repository._staging_parent
    monkeypatch.setattr(repository, "_staging_parent", lambda r: seen.append(r.resolve()) or r.resolve())
    result = write_repository(repo, TritonSettings(), onnx=stand_in_onnx(tmp_path / "s.onnx"))
    assert seen == [repo.resolve()] and [p.name for p in repo.iterdir()] == ["tinyvim"]
    assert hidden_entries(tmp_path) == [] and result.model_dir == repo / "tinyvim"
    # the real choice: beside for a folder on the same filesystem, the nearest existing ancestor for a new one
    assert real_staging(repo) == tmp_path.resolve()
    assert real_staging(tmp_path / "a" / "b" / "repo") == tmp_path


def test_serve_without_a_server_installed_is_one_line(tmp_path, monkeypatch):
    import importlib.util
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "pytriton" else find_spec(name, *a))
    monkeypatch.setenv("PATH", str(tmp_path))          # no tritonserver on PATH either
    (tmp_path / "repo" / "tinyvim").mkdir(parents=True)
    result = CliRunner().invoke(cli, ["serve", str(tmp_path / "repo")])
    assert result.exit_code == 2
    assert result.output.strip().splitlines() == [
        "error: Triton Inference Server is not installed (no nvidia-pytriton, no tritonserver on PATH): "
        "pip install 'tinyvim[serve]' && pip install --no-deps nvidia-pytriton==0.7.0 (or pass --tritonserver PATH "
        "of a Triton Inference Server install)"]


def test_serve_bench_without_a_server_is_one_line():
    url = f"127.0.0.1:{free_port()}"          # nothing listens there
    result = CliRunner().invoke(cli, ["serve-bench", "--url", url, "--duration", "1"])
    assert result.exit_code == 2, result.output
    assert result.output.startswith(f"error: no Triton server at {url}") and len(result.output.splitlines()) == 1


def test_tensorrt_repository_without_tensorrt_fails_before_exporting(tmp_path):
    try:
        import tensorrt  # noqa: F401
        pytest.skip("TensorRT is installed here: the build path would run")
    except (ImportError, OSError):
        pass
    result = CliRunner().invoke(cli, ["export", "--fmt", "triton", "--triton-backend", "tensorrt",
                                      "-o", str(tmp_path / "repo")])
    assert result.exit_code == 2, result.output
    assert "error: TensorRT is not installed" in result.output and "tracing" not in result.output
    assert list(tmp_path.iterdir()) == []


def test_export_onnx_into_a_folder_and_triton_into_a_file_are_one_line_errors(tmp_path):
    (tmp_path / "a_file").write_text("x")
    for args, message in ((["-o", str(tmp_path)], "is a folder: --fmt onnx writes one ONNX file"),
                          (["--fmt", "triton", "-o", str(tmp_path / "a_file")], "is a file: --fmt triton writes")):
        result = CliRunner().invoke(cli, ["export", *args])
        assert result.exit_code == 2 and message in result.output and "Traceback" not in result.output, result.output
    assert (tmp_path / "a_file").read_text() == "x"
