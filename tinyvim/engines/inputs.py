"""Input batches for validation and profiling: random images or real pictures preprocessed
the way ImageNet evaluation does it (resize the shorter side to size / crop_pct, bicubic;
centre crop; scale to [0, 1]; normalise with the ImageNet mean/std)."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from tinyvim.contract import IMAGENET_MEAN, IMAGENET_STD
from tinyvim.errors import TinyvimError

#: 224 / 256: the resize-256-crop-224 evaluation the brief specifies (see README note).
DEFAULT_CROP_PCT = 0.875
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".ppm"}


def normalize(pixels: np.ndarray, mean=None, std=None) -> np.ndarray:
    """(N, 3, H, W) pixels in [0, 1] -> normalised float32."""
    mean = IMAGENET_MEAN if mean is None else mean
    std = IMAGENET_STD if std is None else std
    m = np.asarray(mean, np.float32).reshape(1, 3, 1, 1)
    s = np.asarray(std, np.float32).reshape(1, 3, 1, 1)
    return ((pixels.astype(np.float32) - m) / s).astype(np.float32)


def random_batches(num: int, batch: int, size: tuple[int, int], seed: int = 0) -> list[np.ndarray]:
    """`num` batches (batch, 3, H, W) of uniformly random pixels, normalised like real images
    (so activations see realistic magnitudes, not N(0, 1) noise)."""
    rng = np.random.default_rng(seed)
    return [normalize(rng.random((batch, 3, *size), dtype=np.float32)) for _ in range(num)]


def preprocess_image(path: str | os.PathLike, size: tuple[int, int], crop_pct: float = DEFAULT_CROP_PCT) -> np.ndarray:
    """One picture -> (3, H, W) normalised float32. The shorter side is resized to
    floor(max(H, W) / crop_pct), keeping the aspect ratio, then the centre H x W is cropped."""
    from PIL import Image

    with Image.open(path) as im:
        im = im.convert("RGB")
        w0, h0 = im.size
        target = int(max(size) / crop_pct)
        scale = target / min(w0, h0)
        nw, nh = max(size[1], round(w0 * scale)), max(size[0], round(h0 * scale))
        im = im.resize((nw, nh), Image.BICUBIC)
        left, top = (nw - size[1]) // 2, (nh - size[0]) // 2
        im = im.crop((left, top, left + size[1], top + size[0]))
        pixels = np.asarray(im, dtype=np.float32).transpose(2, 0, 1) / 255.0
    return normalize(pixels[None])[0]


def image_batches(folder: str | os.PathLike, batch: int, size: tuple[int, int], limit: int | None = None,
                  crop_pct: float = DEFAULT_CROP_PCT) -> tuple[list[np.ndarray], list[str]]:
    """Batches (batch, 3, H, W) from the pictures in `folder` (sorted by name; the last batch is
    padded by repeating pictures so every batch has the model's batch size) and the file names."""
    folder = Path(folder)
    if not folder.is_dir():
        raise TinyvimError(f"--images {folder}: not a folder")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if limit:
        files = files[: limit * batch]
    if not files:
        raise TinyvimError(f"--images {folder}: no pictures ({', '.join(sorted(IMAGE_SUFFIXES))})")
    arrays = []
    for p in files:
        try:
            arrays.append(preprocess_image(p, size, crop_pct))
        except Exception as exc:
            raise TinyvimError(f"--images: cannot read {p}: {exc}") from None
    while len(arrays) % batch:
        arrays.append(arrays[len(arrays) % len(files)])
    stacked = np.stack(arrays)
    return [stacked[i:i + batch] for i in range(0, len(stacked), batch)], [p.name for p in files]
