"""The package's shape, held: no import circles, imports at module top, a contract (and the CLI's
help) that load without torch, and a command list that matches the commands."""
from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "tinyvim"
#: modules that may import the project lazily: the CLI's command table (importlib), the
#: package facade (PEP 562) and the Triton python model (runs inside Triton, cannot import tinyvim)
LAZY_OK = {"tinyvim", "tinyvim.cli"}


def _modules() -> dict[str, Path]:
    mods = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(ROOT).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        mods[name] = path
    return mods


def _resolve(name: str, mods) -> str | None:
    while name and name not in mods:
        name = name.rpartition(".")[0]
    return name or None


def import_graph() -> tuple[dict[str, set[str]], list[tuple[str, int]]]:
    """(module -> project modules it imports at module level, including the packages Python
    imports on the way; [(module, line) of imports of project modules inside functions])."""
    mods = _modules()
    graph: dict[str, set[str]] = {m: set() for m in mods}
    nested: list[tuple[str, int]] = []
    for name, path in mods.items():
        tree = ast.parse(path.read_text())
        top_level = set(map(id, tree.body))
        for node in ast.walk(tree):
            if id(node) in top_level and _lazy_target(node):      # `x = lazy_import("tinyvim.y")`: an edge too
                targets = [_lazy_target(node)]
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                targets = [f"{node.module}.{a.name}" for a in node.names] + [node.module]
            else:
                continue
            targets = [t for t in targets if t == "tinyvim" or t.startswith("tinyvim.")]
            if not targets:
                continue
            if id(node) not in top_level and not _under_if(tree, node):
                nested.append((name, node.lineno))
                continue
            for target in targets:
                mod = _resolve(target, mods)
                while mod:                       # the module and every package above it run
                    if mod != name and not name.startswith(mod + "."):
                        graph[name].add(mod)
                    mod = mod.rpartition(".")[0]
    return graph, nested


def _lazy_target(node) -> str | None:
    """'tinyvim.model' for a module-level `models = lazy_import("tinyvim.model")` (tinyvim.lazy):
    imported on first use, but a dependency all the same, so the layering sees it."""
    if (isinstance(node, ast.Assign) and isinstance(node.value, ast.Call)
            and getattr(node.value.func, "id", None) == "lazy_import" and node.value.args
            and isinstance(node.value.args[0], ast.Constant)):
        target = node.value.args[0].value
        return target if target == "tinyvim" or target.startswith("tinyvim.") else None
    return None


def _under_if(tree, node) -> bool:
    """An import in a module-level `if TYPE_CHECKING:` / try block counts as module level."""
    return any(isinstance(top, (ast.If, ast.Try)) and any(n is node for n in ast.walk(top)) for top in tree.body)


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))
    sys.setrecursionlimit(max(10000, sys.getrecursionlimit()))
    for v in graph:
        if v not in index:
            visit(v)
    return out


def test_no_import_circles():
    graph, _ = import_graph()
    assert graph["tinyvim.tools.validate"] >= {"tinyvim.tools.per_block", "tinyvim.backends.registry"}  # sees edges
    assert cycles(graph) == []


def test_the_cycle_finder_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_project_imports_are_at_module_top():
    _, nested = import_graph()
    assert [(m, line) for m, line in nested if m not in LAZY_OK] == []


def test_layers_point_down():
    """contract < model/ops < export < backends < tools < serve < commands < cli: a lower layer
    never imports a higher one (that is how circles start)."""
    order = ["tinyvim.errors", "tinyvim.contract", "tinyvim.utils", "tinyvim.lazy", "tinyvim.ops", "tinyvim.plugins",
             "tinyvim.model", "tinyvim.export", "tinyvim.backends", "tinyvim.tools", "tinyvim.serve",
             "tinyvim.commands", "tinyvim.cli"]

    def layer(mod):
        return max((i for i, p in enumerate(order) if mod == p or mod.startswith(p + ".")), default=None)
    graph, _ = import_graph()
    upward = [(m, t) for m, targets in graph.items() for t in targets
              if layer(m) is not None and layer(t) is not None and layer(t) > layer(m)
              and not (order[layer(m)] == "tinyvim.ops" and order[layer(t)] == "tinyvim.plugins")]
    assert upward == []


def _python(code: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)


def test_contract_imports_without_torch():
    r = _python("import sys\nsys.modules['torch'] = None\nimport tinyvim.contract as c\n"
                "print(c.SCAN_PLUGIN.op_type, 'torch' in sys.modules and sys.modules['torch'] is not None)")
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["CrossSelectiveScan", "False"]


def test_help_lists_commands_without_importing_them():
    r = _python("import sys\nfrom tinyvim.cli import main\ntry:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
                "print('LOADED', sorted(m for m in sys.modules if m.startswith('tinyvim.commands.') or m == 'torch'))")
    assert r.returncode == 0, r.stderr
    assert "LOADED []" in r.stdout
    from tinyvim.cli import SUMMARIES
    for name, summary in SUMMARIES.items():
        assert f"{name}" in r.stdout and summary[:30] in " ".join(r.stdout.split())


@pytest.mark.parametrize("name", ["info", "export", "validate", "profile", "build-engine", "build-plugin",
                                  "serve", "serve-bench", "quantize"])
def test_summaries_are_the_commands_own_first_line(name):
    from tinyvim.cli import SUMMARIES, cli
    import click
    command = cli.get_command(click.Context(cli), name)
    assert " ".join(command.help.split()).startswith(SUMMARIES[name]), (name, command.help)
    assert set(SUMMARIES) == set(cli.list_commands(click.Context(cli)))


#: third-party top-level modules a command may load to parse its options, print its help or
#: refuse a bad argument: click only. torch (2-3 s), onnx/numpy (0.2-0.5 s), onnxscript,
#: onnxruntime, openvino load when a runner or an exporter is built (tinyvim.lazy.lazy_import).
ALLOWED_AT_PARSE_TIME = {"click", "tinyvim"}
#: the project's torch-defined packages load on use too (imported, they pull torch in)
TORCH_PACKAGES = ("tinyvim.model", "tinyvim.ops", "tinyvim.plugins.torch_cuda")

_NEW_MODULES = """
import sys
before = {m.split('.')[0] for m in sys.modules}
from tinyvim.cli import main
try:
    main(sys.argv[1:])
except SystemExit:
    pass
new = {m.split('.')[0] for m in sys.modules} - before - set(sys.stdlib_module_names)
print('NEW', sorted(new))
print('OWN', sorted(m for m in sys.modules if m.startswith(TORCH_PACKAGES)))
"""


@pytest.mark.parametrize("argv", [["validate", "--help"], ["export", "--help"], ["profile", "--help"],
                                  ["quantize", "--help"], ["build-engine", "--help"], ["evaluate", "--help"],
                                  ["benchmark", "--help"],
                                  ["validate", "/nonexistent/model.onnx"], ["info"]])
def test_commands_parse_without_heavy_imports(argv):
    """What `validate --help` and friends import, pinned: a module-top `import torch` (or numpy,
    onnx) anywhere on a command's import path fails here, naming the module that came in."""
    code = f"TORCH_PACKAGES = {TORCH_PACKAGES!r}\n" + _NEW_MODULES
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    r = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 0, r.stderr
    new = eval(r.stdout.split("NEW", 1)[1].splitlines()[0])        # noqa: S307 - our own repr of a list
    assert set(new) <= ALLOWED_AT_PARSE_TIME, f"{argv}: {sorted(set(new) - ALLOWED_AT_PARSE_TIME)} imported"
    assert "OWN []" in r.stdout, r.stdout


def test_the_wheel_holds_what_users_run_and_not_the_test_tools(tmp_path):
    """The TensorRT contract checker (tests/csrc/trt_contract_check.cpp) is a test tool that
    lives with the tests, out of the wheel, while the sources `tinyvim build-plugin` compiles ship; the kernel-on-CPU
    runtime and harness live in tests/cuda_on_cpu, no vendored code anywhere. (~10 s: a
    real wheel build, the only way to see what setuptools' globs and excludes make of the tree.)"""
    import shutil
    import zipfile
    # built from a copy of the files git would commit: setuptools reuses a build/lib it finds (an
    # editable install leaves one), which keeps files the tree no longer has (a deleted module would
    # still ship). Build state is left out by name too, not only by .gitignore.
    listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"], cwd=ROOT,
                            capture_output=True, text=True, check=True).stdout.split("\0")
    src = tmp_path / "src"
    for name in filter(None, listed):
        top = Path(name).parts[0]
        if top in ("build", "dist") or top.endswith(".egg-info"):
            continue
        if (ROOT / name).is_file() and not (ROOT / name).is_symlink():
            (src / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, src / name)
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", str(src), "--no-deps", "--no-build-isolation", "-q",
                        "-w", str(tmp_path)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    names = set(zipfile.ZipFile(next(tmp_path.glob("tinyvim-*.whl"))).namelist())
    assert "tinyvim/plugins/csrc/trt_plugin.cpp" in names and "tinyvim/plugins/CMakeLists.txt" in names
    assert not any(n.endswith("trt_contract_check.cpp") for n in names)
    assert not any(n.startswith("tests/") for n in names)
    assert not any(part in n for n in names for part in ("hip_cpu", "cuda_on_cpu", "third_party")), sorted(names)


def test_ruff_is_clean():
    """ruff with pyproject's rule set (E, F, W, B, UP, SIM; each ignored rule justified there)."""
    pytest.importorskip("ruff", reason="ruff comes with the test extra: pip install -e '.[test]'")
    r = subprocess.run([sys.executable, "-m", "ruff", "check", "--no-cache", "tinyvim", "tests", "bench"], cwd=ROOT,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout[-3000:]
