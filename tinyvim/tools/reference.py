"""The PyTorch reference an export is compared with or timed against: which model to rebuild
(variant, checkpoint, EMA, backbone, size, init seed, batch) from the file's metadata, with the
caller's arguments overriding or filling in, and the honesty rules (random weights said,
overrides that contradict the metadata warned, a checkpoint that differs from the recorded one
warned)."""
from __future__ import annotations

import os
from dataclasses import dataclass

from tinyvim.backends.model_file import ModelInfo
from tinyvim.contract import (
    DEFAULT_IMG_SIZE,
    ExportMetadata,
    InputSpec,
    ModelOverrides,
    ModelSpec,
    check_batch,
)
from tinyvim.errors import TinyvimError
from tinyvim.utils import file_sha256


@dataclass(frozen=True)
class ReferenceConfig:
    """Everything needed to rebuild the PyTorch model an export came from, and the input both
    run on (a concrete size and batch, never dynamic)."""
    model: ModelSpec
    inputs: InputSpec


def resolve_reference(info: ModelInfo, overrides: ModelOverrides = ModelOverrides(), *,
                      img_size: tuple[int, int] | None = None,
                      batch: int | None = None) -> tuple[ReferenceConfig, list[str]]:
    """Reference configuration from the model's metadata, `overrides` (and the size and batch,
    None: the model's) overriding / filling in.

    Returns (config, warnings); raises TinyvimError when the arguments contradict the model."""
    meta = info.metadata
    warnings: list[str] = []
    variant, checkpoint, ema, backbone, init_seed = (overrides.variant, overrides.checkpoint, overrides.ema,
                                                     overrides.backbone, overrides.weight_seed)
    if variant is not None:
        if meta is not None and variant != meta.variant:
            warnings.append(f"--variant {variant} overrides the model's metadata (TinyViM-{meta.variant.upper()}): "
                            "expect a failed comparison unless the metadata is wrong")
    elif meta is not None:
        variant = meta.variant
    else:
        raise TinyvimError(f"{info.path} carries no tinyvim metadata naming its variant: pass --variant s|b|l")

    if backbone is not None and backbone != info.backbone:
        raise TinyvimError(f"--{'' if backbone else 'no-'}backbone contradicts the model, whose outputs are "
                           f"{', '.join(info.output_names)}")
    backbone = info.backbone

    if img_size is not None:
        size = img_size
        if info.fixed_size and size != info.fixed_size:
            raise TinyvimError(f"--img-size {size[0]}x{size[1]} does not match the model's input "
                               f"{info.fixed_size[0]}x{info.fixed_size[1]}")
    else:
        size = info.fixed_size or (meta.input_size if meta and meta.input_size else DEFAULT_IMG_SIZE)

    if batch is not None:
        check_batch(batch)
        problem = info.batch_problem(batch)
        if problem:
            raise TinyvimError(f"--batch {batch}: {problem} (export with --dynamic-batch, or build the engine "
                               "for that batch)")
    else:
        batch = info.fixed_batch or (info.batch_range[0] if info.batch_range else 1)

    inputs = InputSpec(size, batch)       # checks the workload
    checkpoint, ckpt_warnings = resolve_checkpoint(meta, checkpoint, required=True)
    warnings += ckpt_warnings

    if ema is not None and meta is not None and meta.checkpoint and ema != meta.ema:
        warnings.append(f"--{'' if ema else 'no-'}ema overrides the model's metadata (ema={str(meta.ema).lower()}): "
                        "expect a failed comparison unless the metadata is wrong")
    ema = ema if ema is not None else bool(meta and meta.ema)
    if init_seed is not None and meta is not None and checkpoint is None and init_seed != meta.init_seed:
        warnings.append(f"--init-seed {init_seed} overrides the model's metadata (init_seed {meta.init_seed}): "
                        "expect a failed comparison unless the metadata is wrong")
    init_seed = init_seed if init_seed is not None else (meta.init_seed if meta else 0)
    model = ModelSpec(variant, checkpoint=checkpoint, ema=ema, backbone=backbone, weight_seed=init_seed,
                      allow_nonfinite=overrides.allow_nonfinite)
    return ReferenceConfig(model, inputs), warnings


def resolve_checkpoint(meta: ExportMetadata | None, checkpoint: str | None, *,
                       required: bool) -> tuple[str | None, list[str]]:
    """The checkpoint to rebuild a model from: `checkpoint` when given, else the one the
    metadata names. Its sha256 is compared with the metadata's; a mismatch is a warning.
    required=True (validate): a recorded checkpoint that cannot be found is an error;
    False (profile): a warning, and random weights. Returns (checkpoint or None, warnings)."""
    warnings: list[str] = []
    recorded = (meta.checkpoint if meta else "") or None
    recorded_sha = meta.checkpoint_sha256 if meta else ""
    if checkpoint is None and recorded:
        if os.path.isfile(recorded):
            checkpoint = recorded
        elif required:
            raise TinyvimError(f"the model was exported from checkpoint {recorded}, which is not found here: "
                               "pass it with --checkpoint")
        else:
            warnings.append(f"the model was exported from checkpoint {recorded}, which is not found here: "
                            "using random weights (pass --checkpoint)")
    if checkpoint is not None:
        if not os.path.isfile(checkpoint):
            raise TinyvimError(f"--checkpoint {checkpoint}: no such file (or not a regular file)")
        if recorded_sha and file_sha256(checkpoint) != recorded_sha:
            warnings.append(f"checkpoint {checkpoint} differs from the one the model was exported from "
                            f"(sha256 {recorded_sha[:12]}...): expect a mismatch")
        if meta is not None and not recorded_sha:
            warnings.append("the model was exported with random weights, but --checkpoint was given")
    elif recorded_sha and required:
        raise TinyvimError("the model was exported from a checkpoint: pass it with --checkpoint")
    return checkpoint, warnings


def random_weights_note(model: ModelSpec, who: str = "the reference") -> str | None:
    """The line every command prints when it computes with random weights (None otherwise)."""
    if not model.random_weights:
        return None
    return (f"note: no checkpoint: {who} uses randomly initialised weights (seed {model.weight_seed}); "
            "outputs are meaningless, numerics and speed are real")
