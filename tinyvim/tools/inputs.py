"""Input batches for validation and profiling: random images or real pictures preprocessed
the way ImageNet evaluation does it (resize the shorter side to size / crop_pct, bicubic;
centre crop; scale to [0, 1]; normalise with the ImageNet mean/std)."""
from __future__ import annotations

import contextlib
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from collections.abc import Iterator


from tinyvim.contract import IMAGENET_MEAN, IMAGENET_STD, check_batch, check_count, check_input_size, check_seed
from tinyvim.errors import TinyvimError, error_reason
from tinyvim.lazy import lazy_import

np = lazy_import("numpy")
Image = lazy_import("PIL.Image")

#: 224 / 256: the resize-256-crop-224 evaluation the validate issue asked for; TinyViM's own
#: evaluation crops 0.9 (its released evaluation script), which --crop-pct 0.9 gives.
DEFAULT_CROP_PCT = 0.875
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".ppm"}
#: largest picture decoded (64 Mpx: 192 MB as RGB bytes); checked from the header, before decoding.
#: Below PIL's own decompression-bomb limit (89 Mpx), whose warning therefore never fires.
MAX_DECODED_PIXELS = 64 * 2**20
#: largest intermediate the resize may produce (16 Mpx); above it (an extreme aspect ratio, a tiny
#: --crop-pct) only the source region the centre crop needs is resampled, straight to H x W
MAX_RESIZED_PIXELS = 16 * 2**20
#: --crop-pct range: ImageNet evaluations use 0.8..1.0; below 0.1 the crop would be noise
MIN_CROP_PCT = 0.1


@contextlib.contextmanager
def _quiet_pil() -> Iterator[None]:
    """PIL's warnings (EXIF, palettes, bombs) are not printed raw: a picture either decodes (the
    warning was benign) or fails with tinyvim's own one-line error; sizes are bounded by our checks."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def check_crop_pct(crop_pct: float) -> float:
    """The one --crop-pct check: every command that preprocesses pictures (validate, quantize's
    calibration) calls it before any work, and preprocess_image again so no caller can skip it."""
    if not (isinstance(crop_pct, (int, float)) and MIN_CROP_PCT <= crop_pct <= 1.0):
        raise TinyvimError(f"--crop-pct {crop_pct}: use a fraction in [{MIN_CROP_PCT}, 1] (0.875 is the ImageNet "
                           "evaluation's resize-256-crop-224)")
    return float(crop_pct)


@dataclass(frozen=True)
class InputRequest:
    """What `validate` feeds both runs: the size and batch (None: the model's), and the pictures
    (`images`, a folder) or `num_batches` random batches from `input_seed`. Checked when built."""
    size: tuple[int, int] | None = None
    batch: int | None = None
    num_batches: int = 4
    #: seeds the random input batches (`validate --seed`); not the weights
    input_seed: int = 0
    images: str | os.PathLike | None = None
    crop_pct: float = DEFAULT_CROP_PCT

    def __post_init__(self) -> None:
        if self.size is not None:
            check_input_size(*self.size)
        if self.batch is not None:
            check_batch(self.batch)
        check_count(self.num_batches, "--num-inputs")
        check_seed(self.input_seed, "--seed (input seed)")
        check_crop_pct(self.crop_pct)


def normalize(pixels: np.ndarray, mean=None, std=None) -> np.ndarray:
    """(N, 3, H, W) pixels in [0, 1] -> normalised float32."""
    mean = IMAGENET_MEAN if mean is None else mean
    std = IMAGENET_STD if std is None else std
    m = np.asarray(mean, np.float32).reshape(1, 3, 1, 1)
    s = np.asarray(std, np.float32).reshape(1, 3, 1, 1)
    return ((pixels.astype(np.float32) - m) / s).astype(np.float32)


def iter_random_batches(num: int, batch: int, size: tuple[int, int], seed: int = 0) -> Iterator[np.ndarray]:
    """`num` batches (batch, 3, H, W) of uniformly random pixels, normalised like real images
    (so activations see realistic magnitudes, not N(0, 1) noise), made one at a time: the
    memory of a long validation is that of one batch."""
    rng = np.random.default_rng(seed)
    for _ in range(num):
        yield normalize(rng.random((batch, 3, *size), dtype=np.float32))


def random_batches(num: int, batch: int, size: tuple[int, int], seed: int = 0) -> list[np.ndarray]:
    """The batches of `iter_random_batches` as a list (the same values)."""
    return list(iter_random_batches(num, batch, size, seed))


def preprocess_image(path: str | os.PathLike, size: tuple[int, int], crop_pct: float = DEFAULT_CROP_PCT,
                     flag: str = "--images", mean=None, std=None) -> np.ndarray:
    """One picture -> (3, H, W) float32 normalised with mean/std (default ImageNet's). The shorter
    side is resized to floor(max(H, W) / crop_pct), keeping the aspect ratio, then the centre H x W is cropped.
    Memory is bounded: the picture by MAX_DECODED_PIXELS, the resized intermediate by
    MAX_RESIZED_PIXELS (beyond it the crop's source region is resampled directly)."""
    check_crop_pct(crop_pct)
    with _quiet_pil(), Image.open(path) as im:
        _check_pixels(path, im.size, flag)
        im = im.convert("RGB")
        w0, h0 = im.size
        target = int(max(size) / crop_pct)
        scale = target / min(w0, h0)
        nw, nh = max(size[1], round(w0 * scale)), max(size[0], round(h0 * scale))
        left, top = (nw - size[1]) // 2, (nh - size[0]) // 2
        if nw * nh <= MAX_RESIZED_PIXELS:
            im = im.resize((nw, nh), Image.BICUBIC)
            im = im.crop((left, top, left + size[1], top + size[0]))
        else:   # the same centre crop, mapped back to source coordinates
            sx, sy = w0 / nw, h0 / nh
            box = (left * sx, top * sy, (left + size[1]) * sx, (top + size[0]) * sy)
            im = im.resize((size[1], size[0]), Image.BICUBIC, box=box)
        pixels = np.asarray(im, dtype=np.float32).transpose(2, 0, 1) / 255.0
    return normalize(pixels[None], mean, std)[0]


def _check_pixels(path, wh: tuple[int, int], flag: str = "--images") -> None:
    w, h = wh
    if w * h > MAX_DECODED_PIXELS:
        raise TinyvimError(f"{flag}: {path} is {w}x{h} ({w * h / 2**20:.0f} Mpx), above the "
                           f"{MAX_DECODED_PIXELS // 2**20} Mpx tinyvim decodes: downscale it first")


def list_images(folder: str | os.PathLike, batch: int, limit: int | None = None, flag: str = "--images") -> list[Path]:
    """The pictures in `folder` (sorted by name, at most limit * batch), each checked to open
    as an image (header only, so it is cheap) before any work starts; one-line errors that name
    the command's option (`flag`: validate's --images, quantize's --calib)."""
    folder = Path(folder)
    if not folder.is_dir():
        what = "no such folder" if not folder.exists() else "a file, not a folder" if folder.is_file() else "not a folder"
        raise TinyvimError(f"{flag} {folder}: {what} (pass the folder that holds the pictures)")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if limit:
        files = files[: limit * batch]
    if not files:
        raise TinyvimError(f"{flag} {folder}: no pictures ({', '.join(sorted(IMAGE_SUFFIXES))})")
    for p in files:
        try:
            with _quiet_pil(), Image.open(p) as im:    # the header only: cheap
                size = im.size
        except Exception as exc:  # noqa: BLE001 - PIL raises many types for a bad file
            raise TinyvimError(f"{flag}: cannot read {p}: {error_reason(exc, 200)}") from None
        _check_pixels(p, size, flag)
    return files


def iter_image_batches(files: list[Path], batch: int, size: tuple[int, int],
                       crop_pct: float = DEFAULT_CROP_PCT, flag: str = "--images") -> Iterator[np.ndarray]:
    """Batches (batch, 3, H, W) of `files`, preprocessed one batch at a time; the last batch is
    padded by repeating pictures from the start so every batch has the model's batch size."""
    total = -(-len(files) // batch) * batch
    for start in range(0, total, batch):
        yield np.stack([load_picture(files[i % len(files)], size, crop_pct, flag) for i in range(start, start + batch)])


def load_picture(path: Path, size: tuple[int, int], crop_pct: float = DEFAULT_CROP_PCT, flag: str = "--images",
                 mean=None, std=None) -> np.ndarray:
    """`preprocess_image` with every failure said as one line naming the picture and `flag`:
    too large (checked from the header), not decodable, out of memory."""
    try:
        return preprocess_image(path, size, crop_pct, flag, mean, std)
    except TinyvimError:
        raise
    except MemoryError:
        raise TinyvimError(f"{flag}: not enough memory to decode {path}: downscale it, or free memory") from None
    except Exception as exc:  # noqa: BLE001 - a picture that does not open or decode
        raise TinyvimError(f"{flag}: cannot read {path}: {error_reason(exc, 200)}") from None


def image_batches(folder: str | os.PathLike, batch: int, size: tuple[int, int], limit: int | None = None,
                  crop_pct: float = DEFAULT_CROP_PCT) -> tuple[list[np.ndarray], list[str]]:
    """All batches of the pictures in `folder` as a list, and the file names (see list_images
    and iter_image_batches)."""
    files = list_images(folder, batch, limit)
    return list(iter_image_batches(files, batch, size, crop_pct)), [p.name for p in files]
