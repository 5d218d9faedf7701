"""Backends by name. Each backend folder declares its `Backend`s (tinyvim/backends/spec.py);
this module registers them, and `validate`, `profile` and the CLI look them up here and never
branch on their names. Adding a backend is one folder plus one `register(...)` line at the
bottom of this file: its flags then appear on the commands, its file kind is read, and the
tools run it (tests/test_backend_registry.py adds one and checks exactly that).
"""
from __future__ import annotations

import os
from pathlib import Path
from collections.abc import Callable

from tinyvim.backends import ort, ov, trt
from tinyvim.backends import torch as torch_backends
from tinyvim.backends.model_file import ModelInfo, read_onnx_info
from tinyvim.backends.spec import Backend, BackendOption, RunnerRequest  # noqa: F401  (re-exported)
from tinyvim.contract import FILE_KINDS
from tinyvim.errors import TinyvimError

_REGISTRY: dict[str, Backend] = {}


def register(*backends: Backend) -> None:
    """Make each backend selectable by name (the one way a backend enters the registry)."""
    for backend in backends:
        if backend.name in _REGISTRY:
            raise ValueError(f"backend {backend.name!r} is registered twice")
        for other in _REGISTRY.values():   # one option name must mean one thing on every command
            for a in backend.options:
                for b in other.options:
                    if (a.name == b.name) != (a.flag == b.flag) or (a.name == b.name and a != b):
                        raise ValueError(f"option {a.flag} of {backend.name} clashes with {b.flag} of {other.name}")
        for kind in backend.readers:
            if kind not in FILE_KINDS:
                raise ValueError(f"backend {backend.name} reads file kind {kind!r}, which contract.FILE_KINDS lacks")
        _REGISTRY[backend.name] = backend


def unregister(name: str) -> None:
    """Remove a backend (tests that register a throwaway one)."""
    _REGISTRY.pop(name, None)


def backend_names() -> list[str]:
    return list(_REGISTRY)


def get_backend(name: str) -> Backend:
    key = str(name).strip().lower()
    if key not in _REGISTRY:
        raise TinyvimError(f"unknown backend {name!r}; choose from {', '.join(_REGISTRY)}")
    return _REGISTRY[key]


def parse_backends(values) -> list[Backend]:
    """'torch,ort' or ('torch', 'ort') -> backends in order, duplicates dropped."""
    names: list[str] = []
    for v in values if isinstance(values, (list, tuple)) else [values]:
        for name in (s.strip().lower() for s in str(v).split(",")):
            if name and name not in names:
                names.append(name)
    if not names:
        raise TinyvimError(f"no backend given; choose from {', '.join(_REGISTRY)}")
    return [get_backend(n) for n in names]


def check_model(backend: Backend, info: ModelInfo) -> None:
    """A one-line error when `backend` cannot run `info`'s kind of file, naming those that can."""
    backend.check_model(info, [b.name for b in _REGISTRY.values() if info.kind in b.model_kinds])


def read_model_info(path: str | os.PathLike) -> ModelInfo:
    """The ModelInfo of any model file: its kind from the suffix (contract.FILE_KINDS; anything
    else is read as ONNX), read by the backend that owns that kind."""
    suffix = Path(path).suffix.lower()
    kind = next((k for k, suffixes in FILE_KINDS.items() if suffix in suffixes), "onnx")
    return file_readers()[kind](path)


def file_readers() -> dict[str, Callable[[str], ModelInfo]]:
    readers: dict[str, Callable[[str], ModelInfo]] = {"onnx": read_onnx_info}
    for backend in _REGISTRY.values():
        readers.update(backend.readers)
    return readers


def default_backend_for(info: ModelInfo) -> Backend:
    for backend in _REGISTRY.values():
        if info.kind in backend.default_for:
            return backend
    raise TinyvimError(f"no backend runs {info.kind} files like {info.path}")


def unused_option_warnings(backends: list[Backend], options: dict) -> list[str]:
    """A warning for each given backend option (not None) that none of `backends` takes, e.g.
    --ov-precision with --backend ort: said, not silently ignored."""
    taken = {opt.name for b in backends for opt in b.options}
    flags = {opt.name: (opt.flag, [b.name for b in _REGISTRY.values() if opt in b.options]) for opt in all_options()}
    return [f"{flags[name][0]} applies to --backend {' or '.join(flags[name][1])} only: ignored for "
            f"{', '.join(b.name for b in backends)}"
            for name, value in options.items() if value is not None and name in flags and name not in taken]


def all_options() -> list[BackendOption]:
    """Every backend option once, in registration order (for the CLI)."""
    seen: dict[str, BackendOption] = {}
    for backend in _REGISTRY.values():
        for opt in backend.options:
            seen.setdefault(opt.name, opt)
    return list(seen.values())


# --------------------------------------------------------------------- the backends
register(*torch_backends.BACKENDS)
register(*ort.BACKENDS)
register(*trt.BACKENDS)
register(*ov.BACKENDS)
