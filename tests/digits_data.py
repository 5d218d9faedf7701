"""The trained fixture's data: scikit-learn's `load_digits` (1797 8x8 greyscale digits, BSD-3,
shipped inside the scikit-learn wheel, no download) split once by a fixed rule, written as
pictures on demand.

The split is a rule, not a random draw, so anyone can check that training and testing never
share a picture: image i is held out when i % HELDOUT_EVERY == 0 (360 pictures), the rest
(1437) train. scripts/train_fixture.py trains on `split("train")`; the tests, the benchmark
and bench/evaluate_fixture.py evaluate on `split("heldout")`. The pictures are written as 8x8
PNGs and go through the very preprocessing `evaluate` uses (bicubic upscaling to 64/crop_pct,
centre crop 64, ImageNet mean/std), at training time too.

Lives in tests/ (not the package): it is test data, and scikit-learn is a test dependency.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image

HELDOUT_EVERY = 5
FIXTURE_SIZE = 64
NUM_CLASSES = 10
#: the checkpoint scripts/train_fixture.py writes (fp16 weights, ~11 MB)
FIXTURE_CHECKPOINT = Path(__file__).resolve().parent / "data" / "tinyvim_s_digits64.pth"


def _digits() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits   # a test dependency: imported only when data is asked for
    d = load_digits()
    # 0..16 ink levels -> 0..255 greyscale, ink bright on black as scikit-learn stores it
    pixels = np.clip(np.rint(d.images * (255.0 / 16.0)), 0, 255).astype(np.uint8)
    return pixels, d.target.astype(np.int64)


def split(which: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(indices into load_digits, 8x8 uint8 pictures, labels) of the 'train' or 'heldout' split."""
    pixels, labels = _digits()
    idx = np.arange(len(labels))
    mask = idx % HELDOUT_EVERY == 0
    if which == "train":
        mask = ~mask
    elif which != "heldout":
        raise ValueError(f"split {which!r}: 'train' or 'heldout'")
    return idx[mask], pixels[mask], labels[mask]


def picture_name(index: int, copy: int = 0) -> str:
    return f"digit_{index:04d}.png" if copy == 0 else f"digit_{index:04d}_{copy}.png"


def write_pictures(folder: str | os.PathLike, which: str = "heldout", layout: str = "folders",
                   limit: int | None = None, copies: int = 1) -> list[tuple[str, int]]:
    """Write a split's pictures under `folder` and return [(relative path, label)] in order.

    layout 'folders': one sub-folder per class, named '0'..'9' (sorted order = class index);
    'flat': all pictures in `folder` plus a val.txt of `name index` lines.
    copies > 1 writes each picture that many times (new names), for memory-at-scale runs."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    indices, pixels, labels = split(which)
    if limit is not None:
        # class by class in turn (the first 0, the first 1, ..., the second 0, ...): every digit is in
        # even a small subset (the held-out rule i % 5 == 0 meets scikit-learn's near-periodic
        # label order and would otherwise give mostly 0s and 5s), kept in the split's order
        rank = np.zeros(len(labels), np.int64)
        for c in np.unique(labels):
            rank[labels == c] = np.arange(np.sum(labels == c))
        keep = np.sort(np.lexsort((labels, rank))[:limit])
        indices, pixels, labels = indices[keep], pixels[keep], labels[keep]
    written: list[tuple[str, int]] = []
    for copy in range(copies):
        for i, px, y in zip(indices, pixels, labels):
            rel = (f"{int(y)}/" if layout == "folders" else "") + picture_name(int(i), copy)
            (folder / rel).parent.mkdir(exist_ok=True)
            Image.fromarray(px).save(folder / rel)
            written.append((rel, int(y)))
    if layout == "flat":
        (folder / "val.txt").write_text("".join(f"{name} {y}\n" for name, y in written))
    elif layout != "folders":
        raise ValueError(f"layout {layout!r}: 'folders' or 'flat'")
    return written
