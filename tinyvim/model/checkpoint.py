"""Reading official TinyViM checkpoints safely, and saying clearly why a file does not fit."""
from __future__ import annotations

import argparse
import os
from pathlib import Path

import torch
from torch import nn

from tinyvim.errors import TinyvimError
from tinyvim.model.tinyvim import VARIANTS
from tinyvim.utils import file_sha256  # noqa: F401  (part of this module's API)

CLASSIFIER_ONLY_PREFIXES = ("norm.", "head.", "dist_head.")
BACKBONE_NORMS = ("norm0.", "norm2.", "norm4.", "norm6.")


def read_checkpoint(path: str | os.PathLike, *, ema: bool = False) -> dict[str, torch.Tensor]:
    """The model state dict inside a checkpoint file, floats upcast to float32.

    Accepts a bare state dict, {'model': …}, {'state_dict': …} and, with ema=True,
    {'model_ema': …}. Loads with weights_only=True: no pickled code runs (the official
    training checkpoints hold an argparse.Namespace, which is allow-listed)."""
    path = Path(path)
    if not path.is_file():
        raise TinyvimError(f"checkpoint not found: {path} (pass the path of a TinyViM .pth file)")
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unpickling failure means the same thing to a user
        reason = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else type(exc).__name__
        raise TinyvimError(f"cannot read checkpoint {path}: not a PyTorch checkpoint, corrupt, or holds "
                           f"objects that are unsafe to load ({reason})") from None
    state = _unwrap(obj, path, ema)
    return {k.removeprefix("module."): (v.float() if v.is_floating_point() else v) for k, v in state.items()}


def _unwrap(obj, path: Path, ema: bool) -> dict[str, torch.Tensor]:
    if not isinstance(obj, dict):
        raise TinyvimError(f"checkpoint {path} holds a {type(obj).__name__}, not a state dict")
    if ema:
        if "model_ema" not in obj:
            raise TinyvimError(f"--ema asked for, but checkpoint {path} has no 'model_ema' entry "
                               f"(it has: {', '.join(sorted(map(str, obj))[:8])})")
        obj = obj["model_ema"]
    else:
        for key in ("model", "state_dict"):
            if key in obj and isinstance(obj[key], dict):
                obj = obj[key]
                break
    if not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise TinyvimError(f"checkpoint {path} has no model weights (expected a state dict, or one under "
                           f"'model', 'state_dict' or 'model_ema')")
    return obj


def infer_variant(state: dict[str, torch.Tensor]) -> str | None:
    """Which variant a state dict belongs to, from the stem and last-stage widths."""
    stem = state.get("patch_embed.2.c.weight")
    last = next((v for k, v in state.items() if k.startswith("network.6.") and k.endswith("mlp.fc1.c.weight")), None)
    if stem is None or last is None:
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
