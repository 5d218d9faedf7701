"""Reading official TinyViM checkpoints safely, and saying clearly why a file does not fit."""
from __future__ import annotations

import argparse
import os
import re
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from tinyvim.errors import TinyvimError
from tinyvim.model.tinyvim import VARIANTS
from tinyvim.utils import file_sha256  # noqa: F401  (part of this module's API)

CLASSIFIER_ONLY_PREFIXES = ("norm.", "head.", "dist_head.")
BACKBONE_NORMS = ("norm0.", "norm2.", "norm4.", "norm6.")


#: dtypes a weight may be stored in (upcast to float32 on load) and an integer buffer in
FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
INT_DTYPES = (torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64)
#: a classifier head wider than this is not an image classifier (and would allocate GBs)
MAX_CLASSES = 100_000


def read_checkpoint(path: str | os.PathLike, *, ema: bool = False,
                    allow_nonfinite: bool = False) -> dict[str, torch.Tensor]:
    """The model state dict inside a checkpoint file, floats upcast to float32.

    Accepts a bare state dict, {'model': …}, {'state_dict': …} and, with ema=True,
    {'model_ema': …}. Loads with weights_only=True: no pickled code runs (the official
    training checkpoints hold an argparse.Namespace, which is allow-listed). Then every entry
    is checked (`check_state`): string keys; dense CPU tensors of a float or integer dtype, no
    views larger than their storage; finite weights unless allow_nonfinite. One-line
    TinyvimError for anything else."""
    path = Path(path)
    if not path.is_file():
        what = "not found" if not path.exists() else "not a regular file"
        raise TinyvimError(f"checkpoint {what}: {path} (pass the path of a TinyViM .pth file)")
    try:
        with torch.serialization.safe_globals([argparse.Namespace]), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unpickling failure means the same thing to a user
        raise TinyvimError(f"cannot read checkpoint {path}: {_load_failure(exc)}") from None
    state = check_state(_unwrap(obj, path, ema), path, allow_nonfinite=allow_nonfinite)
    return {k: (v.float() if v.is_floating_point() else v) for k, v in state.items()}


def _load_failure(exc: Exception) -> str:
    """torch.load's failure in one whole sentence. Its weights-only refusal is a paragraph (ANSI
    codes, two numbered options, a URL) whose first line was cut mid-sentence; what matters in
    it is the class it refused."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(exc))
    refused = re.search(r"Unsupported global: GLOBAL ([\w.]+)", text)
    if refused:
        return (f"it holds a pickled {refused.group(1)} object, which is unsafe to load (tinyvim loads weights "
                "only): re-save just the state dict, torch.save(model.state_dict(), PATH), where the file is trusted")
    first = text.strip().splitlines()[0] if text.strip() else type(exc).__name__
    if len(first) > 160:
        first = first[:157].rsplit(" ", 1)[0] + "..."
    return f"not a PyTorch checkpoint, or corrupt ({first})"


def _unwrap(obj, path: Path, ema: bool) -> dict:
    if not isinstance(obj, dict):
        raise TinyvimError(f"checkpoint {path} holds a {type(obj).__name__}, not a state dict")
    if ema:
        if "model_ema" not in obj:
            raise TinyvimError(f"--ema asked for, but checkpoint {path} has no 'model_ema' entry "
                               f"(it has: {', '.join(sorted(map(repr, obj))[:8])})")
        obj = obj["model_ema"]
        if not isinstance(obj, dict):
            raise TinyvimError(f"checkpoint {path}: its 'model_ema' entry is a {type(obj).__name__}, "
                               "not a state dict")
    else:
        for key in ("model", "state_dict"):
            if key in obj and isinstance(obj[key], dict):
                obj = obj[key]
                break
    if not obj or not any(isinstance(v, torch.Tensor) for v in obj.values()):
        raise TinyvimError(f"checkpoint {path} has no model weights (expected a state dict, or one under "
                           f"'model', 'state_dict' or 'model_ema')")
    return obj


def _describe(key) -> str:
    text = repr(key)
    return text if len(text) <= 80 else text[:77] + "..."


def check_state(obj: dict, source, *, allow_nonfinite: bool = False) -> dict[str, torch.Tensor]:
    """The state dict with 'module.' prefixes removed, after checking every entry; a one-line
    TinyvimError naming the first bad entry otherwise."""
    state: dict[str, torch.Tensor] = {}
    for key, value in obj.items():
        if not isinstance(key, str):
            raise TinyvimError(f"checkpoint {source}: key {_describe(key)} (of type {type(key).__name__}) is not "
                               "a parameter name: not a model state dict")
        name = key.removeprefix("module.")
        problem = _tensor_problem(value)
        if problem:
            raise TinyvimError(f"checkpoint {source}: {_describe(key)} {problem}: not a usable model state dict")
        if name in state:
            raise TinyvimError(f"checkpoint {source}: {name!r} appears twice (with and without 'module.')")
        if value.is_floating_point() and not allow_nonfinite:
            bad = _nonfinite_count(value)
            if bad:
                raise TinyvimError(f"checkpoint {source}: {name} has {bad} non-finite value(s) (NaN/Inf): the weights "
                                   "are damaged; pass --allow-nonfinite to load them anyway")
        state[name] = value
    return state


def _nonfinite_count(value: torch.Tensor) -> int:
    """NaN/Inf entries of a float tensor, counted in numpy: on hundreds of small tensors
    torch's per-op thread-pool overhead costs seconds on a busy 2-core machine, numpy ms."""
    array = (value if value.dtype in (torch.float16, torch.float32, torch.float64) else value.float()).numpy()
    return int(array.size - np.count_nonzero(np.isfinite(array)))


def _tensor_problem(value) -> str | None:
    """Why `value` cannot be a weight or buffer (None when it can)."""
    if not isinstance(value, torch.Tensor):
        return f"is of type {type(value).__name__}, not a tensor"
    if value.is_meta or value.device.type != "cpu":
        return f"is a {value.device.type} tensor without data"
    if value.layout != torch.strided or value.is_nested:
        return f"is a {str(value.layout).removeprefix('torch.')} tensor, not a dense one"
    if value.is_quantized:
        return "is a quantized tensor"
    if value.dtype not in FLOAT_DTYPES + INT_DTYPES:
        return f"has dtype {str(value.dtype).removeprefix('torch.')} (weights are float16/bfloat16/float32/float64)"
    if value.numel():
        if any(st < 0 or (st == 0 and size > 1) for size, st in zip(value.shape, value.stride())):
            return f"is an expanded view of shape {tuple(value.shape)} over {value.untyped_storage().nbytes()} bytes"
        extent = value.storage_offset() + 1 + sum((size - 1) * st for size, st in zip(value.shape, value.stride()))
        if extent * value.element_size() > value.untyped_storage().nbytes():
            return "is a view beyond its storage"
    return None


def infer_variant(state: dict[str, torch.Tensor]) -> str | None:
    """Which variant a state dict belongs to, from the stem and last-stage widths."""
    stem = state.get("patch_embed.2.c.weight")
    last = next((v for k, v in state.items() if k.startswith("network.6.") and k.endswith("mlp.fc1.c.weight")), None)
    if stem is None or last is None or stem.dim() < 1 or last.dim() < 2:
        return None
    for name, cfg in VARIANTS.items():
        if stem.shape[0] == cfg.widths[0] and last.shape[1] == cfg.widths[3]:
            return name
    return None


def _summarise(keys: list[str], limit: int = 4) -> str:
    keys = sorted(keys)
    more = f" … (+{len(keys) - limit} more)" if len(keys) > limit else ""
    return ", ".join(keys[:limit]) + more


def load_into(model: nn.Module, state: dict[str, torch.Tensor], variant: str, source: str,
              allowed_missing: tuple[str, ...] = ()) -> None:
    """load_state_dict(strict) with one clear message when the file does not fit."""
    own = model.state_dict()
    missing = [k for k in own if k not in state and not k.startswith(allowed_missing)]
    unexpected = [k for k in state if k not in own]
    mismatched = [f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}"
                  for k in own if k in state and state[k].shape != own[k].shape]
    wrong_kind = [f"{k} is {str(state[k].dtype).removeprefix('torch.')}"
                  for k in own if k in state and state[k].is_floating_point() != own[k].is_floating_point()]
    if wrong_kind and not (missing or unexpected or mismatched):
        raise TinyvimError(f"checkpoint {source}: {len(wrong_kind)} entries of the wrong kind "
                           f"({_summarise(wrong_kind, 2)}): weights must be floating point, counters integers")
    if missing or unexpected or mismatched:
        found = infer_variant(state)
        looks = (f"it looks like TinyViM-{found.upper()}" if found else "it does not look like any TinyViM variant")
        hint = (f"; use --variant {found}" if found and found != variant else "")
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing keys ({_summarise(missing)})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected keys ({_summarise(unexpected)})")
        if mismatched:
            parts.append(f"{len(mismatched)} shape mismatches ({_summarise(mismatched, 2)})")
        raise TinyvimError(f"checkpoint {source} does not fit TinyViM-{variant.upper()}: {looks}{hint}; "
                           + "; ".join(parts))
    model.load_state_dict(state, strict=not allowed_missing)


def backbone_state(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], tuple[str, ...]]:
    """A classification checkpoint for the backbone, as the official backbone loads it:
    classifier-only keys dropped, the four output norms left at their initial values.
    A backbone checkpoint (with norm0..norm6) loads strictly as it is."""
    if any(k.startswith(BACKBONE_NORMS) for k in state):
        return state, ()
    return {k: v for k, v in state.items() if not k.startswith(CLASSIFIER_ONLY_PREFIXES)}, BACKBONE_NORMS
