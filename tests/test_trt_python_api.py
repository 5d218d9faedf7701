"""Every `tensorrt` name our code uses exists in the real Python bindings of TensorRT 10.16 and
11.1 (their pybind11 sources in ../shared/third_party/tensorrt/*/python), or sits in a
function that refuses the versions lacking it with an explicit `trt_major(...)` guard.

Our modules are read, not imported (tests/trt_pybind.py): `trt.X`, `trt.X.Y`, attributes of
values annotated "trt.Class", and methods of our subclasses of TensorRT classes."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

import tinyvim
from trt_pybind import python_api, used_api, uses_tensorrt

ROOT = Path(tinyvim.__file__).resolve().parent
BINDINGS = Path(__file__).resolve().parents[2] / "shared" / "third_party" / "tensorrt"
VERSIONS = {"10.16": 10, "11.1": 11}

pytestmark = pytest.mark.skipif(
    not all((BINDINGS / v / "python" / "src").is_dir() for v in VERSIONS),
    reason=f"TensorRT's pybind sources not found under {BINDINGS} (../shared/third_party, see its README)")


@pytest.fixture(scope="module")
def apis():
    return {v: python_api(BINDINGS / v) for v in VERSIONS}


def _modules() -> dict[str, ast.Module]:
    trees = {str(p.relative_to(ROOT.parent)): ast.parse(p.read_text()) for p in sorted(ROOT.rglob("*.py"))}
    return {name: tree for name, tree in trees.items() if uses_tensorrt(tree)}


def _guards(tree: ast.Module) -> dict[str, list[tuple[ast.cmpop, int]]]:
    """function name -> the `if trt_major(...) <op> N: raise` tests at its top level."""
    out: dict[str, list] = {}
    for fn in ast.walk(tree):
        if not isinstance(fn, ast.FunctionDef):
            continue
        for stmt in fn.body:
            t = getattr(stmt, "test", None)
            if (isinstance(stmt, ast.If) and isinstance(stmt.body[0], ast.Raise) and isinstance(t, ast.Compare)
                    and getattr(t.left, "func", None) is not None and getattr(t.left.func, "id", "") == "trt_major"
                    and isinstance(t.comparators[0], ast.Constant)):
                out.setdefault(fn.name, []).append((t.ops[0], t.comparators[0].value))
    return out


def _refuses(guards, major: int) -> bool:
    ops = {ast.GtE: lambda n: major >= n, ast.Gt: lambda n: major > n, ast.Lt: lambda n: major < n,
           ast.LtE: lambda n: major <= n, ast.Eq: lambda n: major == n}
    return any(ops[type(op)](n) for op, n in guards)


def missing_names(trees: dict[str, ast.Module], apis: dict) -> list[str]:
    """Uses of names absent from a version's bindings, outside functions guarded against it."""
    problems = []
    for name, tree in trees.items():
        guards = _guards(tree)
        for cls, attr, fn in sorted(used_api(tree), key=str):
            for version, api in apis.items():
                if attr not in api.get(cls, set()) and not _refuses(guards.get(fn, []), VERSIONS[version]):
                    problems.append(f"{name}: trt{'.' + cls if cls else ''}.{attr} is not in TensorRT {version}")
    return sorted(set(problems))


def test_our_tensorrt_names_exist_in_both_releases(apis):
    trees = _modules()
    # every module that gets the tensorrt module is walked (serve/repository.py only checks it is there)
    assert set(trees) >= {"tinyvim/backends/trt/builder.py", "tinyvim/backends/trt/common.py",
                          "tinyvim/backends/trt/runner.py"}
    used = {(c, a) for tree in trees.values() for c, a, _ in used_api(tree)}
    # the walk sees what matters: the plugin registration, the runner, the 10.x-only pinning
    assert {("IPluginRegistry", "load_library"), ("", "get_plugin_registry"), ("ICudaEngine", "create_execution_context"),
            ("IExecutionContext", "execute_async_v3"), ("ILayer", "set_output_type"), ("ILayer", "precision"),
            ("IProgressMonitor", "phase_start"), ("MemoryPoolType", "WORKSPACE")} <= used
    assert missing_names(trees, apis) == []
    # and the guard is needed: per-layer precision is gone in 11.1, present in 10.16
    for attr in ("precision", "set_output_type"):
        assert attr in apis["10.16"]["ILayer"] and attr not in apis["11.1"]["ILayer"]
    assert "FP16" in apis["10.16"]["BuilderFlag"] and "FP16" not in apis["11.1"]["BuilderFlag"]


def test_a_made_up_or_unguarded_name_is_reported(apis):
    code = '''
def run(trt, engine: "trt.ICudaEngine", layer: "trt.ILayer"):
    trt.Builder(None)
    trt.NoSuchClass()
    engine.made_up_attribute
    layer.set_output_type(0, trt.float32)

def guarded(trt, layer: "trt.ILayer"):
    if trt_major(trt.__version__) >= 11:
        raise RuntimeError
    layer.precision = trt.float32
'''
    tree = ast.parse(code)
    problems = missing_names({"snippet.py": tree}, apis)
    assert problems == ["snippet.py: trt.ICudaEngine.made_up_attribute is not in TensorRT 10.16",
                        "snippet.py: trt.ICudaEngine.made_up_attribute is not in TensorRT 11.1",
                        "snippet.py: trt.ILayer.set_output_type is not in TensorRT 11.1",
                        "snippet.py: trt.NoSuchClass is not in TensorRT 10.16",
                        "snippet.py: trt.NoSuchClass is not in TensorRT 11.1"]


def test_the_fake_tensorrt_only_has_real_names(apis):
    """The recording stand-in the build tests use (fake_tensorrt.py) defines no name its
    version's bindings lack, so what passes against it uses the real API."""
    import fake_tensorrt
    for version in VERSIONS:
        fake = fake_tensorrt.make(f"{version}.0.1", events=[])
        for cls, attr in fake_tensorrt.names(fake):
            assert attr in apis[version].get(cls, set()), f"fake {version}: {cls}.{attr}"
