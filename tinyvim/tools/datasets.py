"""Labelled picture folders for `tinyvim evaluate`: which layout a folder has, and its
(picture, label) list. Only paths and labels are held (a few MB for ImageNet's 50,000 val
pictures); pictures are decoded later, a batch at a time.

Layouts (exactly one per folder, else a one-line error):
- imagenet-folders: one sub-folder per ImageNet-1k WNID (n01440764 ...), labels from the
  sorted WNID table (`imagenet_wnids`, tinyvim/data/imagenet_wnids.txt - the one declaration);
- class-folders: any other sub-folders, labels from `--class-map` (lines `folder index`) or,
  without one, the folders' sorted order (for a custom head of exactly that many classes);
- loc-csv: pictures in the folder and Kaggle's LOC_val_solution.csv (`ImageId,PredictionString`,
  the label is the first WNID of the PredictionString);
- val-txt: pictures in the folder and a val.txt of `name index` lines.
"""
from __future__ import annotations

import csv
import functools
import os
import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from tinyvim.contract import check_count
from tinyvim.errors import TinyvimError
from tinyvim.tools.inputs import IMAGE_SUFFIXES

IMAGENET_CLASSES = 1000
WNID_PATTERN = re.compile(r"n[0-9]{8}")
LOC_CSV, VAL_TXT = "LOC_val_solution.csv", "val.txt"
LAYOUTS = ("imagenet-folders", "class-folders", "loc-csv", "val-txt")


@functools.lru_cache(maxsize=1)
def imagenet_wnids() -> tuple[str, ...]:
    """The 1000 ImageNet-1k WNIDs in class-index order (sorted, as every ImageNet-1k head is
    trained: index 0 n01440764 tench ... 999 n15075141 toilet tissue)."""
    text = (resources.files("tinyvim") / "data" / "imagenet_wnids.txt").read_text()
    return tuple(text.split())


@dataclass(frozen=True)
class LabelledSet:
    """A labelled folder: its layout, the (picture, class index) pairs in a fixed order, the
    class names by index where the layout has them, and the head width the labels call for
    (None when any head wider than the largest label fits: a label file, a class map)."""
    root: Path
    layout: str
    items: tuple[tuple[Path, int], ...]
    class_names: tuple[str, ...]
    num_classes: int | None
    skipped_labels: int = 0        # label-file rows whose picture is not in the folder

    def class_name(self, index: int) -> str:
        return self.class_names[index] if 0 <= index < len(self.class_names) else str(index)


def _pictures(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


def _read_text(path: Path, what: str) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise TinyvimError(f"{what} {path}: cannot read it ({exc})") from None


def open_labelled_set(folder: str | os.PathLike, *, class_map: str | os.PathLike | None = None,
                      limit: int | None = None) -> LabelledSet:
    """The labelled pictures of `folder` (module docstring); `limit`: that many, spread evenly
    over the sorted list (every class represented, not the first classes only)."""
    if limit is not None:
        check_count(limit, "--limit")
    root = Path(folder)
    if not root.is_dir():
        raise TinyvimError(f"--data {root}: not a folder (give a folder of labelled pictures)")
    label_files = [root / n for n in (LOC_CSV, VAL_TXT) if (root / n).is_file()]
    subdirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    class_dirs = [d for d in subdirs if _pictures(d)]
    loose = _pictures(root)
    if len(label_files) > 1:
        raise TinyvimError(f"--data {root}: holds both {LOC_CSV} and {VAL_TXT}: mixed layouts, keep one label file")
    if label_files and class_dirs:
        raise TinyvimError(f"--data {root}: mixed layouts: a label file ({label_files[0].name}) and class folders "
                           f"({class_dirs[0].name}, ...): use one layout per folder")
    if loose and class_dirs:
        raise TinyvimError(f"--data {root}: mixed layouts: pictures ({loose[0].name}, ...) beside class folders "
                           f"({class_dirs[0].name}, ...): move the loose pictures into their class folders")
    if class_map is not None and not class_dirs:
        raise TinyvimError(f"--class-map applies to a folder of class folders, and {root} has none")
    if label_files:
        if not loose:
            raise TinyvimError(f"--data {root}: {label_files[0].name} but no pictures ({', '.join(sorted(IMAGE_SUFFIXES))})")
        parse = _parse_loc_csv if label_files[0].name == LOC_CSV else _parse_val_txt
        result = parse(root, label_files[0], loose)
    elif class_dirs:
        result = _class_folders(root, class_dirs, class_map)
    elif loose:
        raise TinyvimError(f"--data {root}: pictures without labels: add {VAL_TXT} (`name index` lines) or "
                           f"{LOC_CSV}, or sort them into class folders")
    else:
        raise TinyvimError(f"--data {root}: no pictures ({', '.join(sorted(IMAGE_SUFFIXES))}) in it or its "
                           "sub-folders")
    if limit is not None and limit < len(result.items):
        n = len(result.items)
        picked = tuple(result.items[(i * n) // limit] for i in range(limit))
        result = LabelledSet(result.root, result.layout, picked, result.class_names, result.num_classes,
                             result.skipped_labels)
    return result


def _class_folders(root: Path, class_dirs: list[Path], class_map) -> LabelledSet:
    names = [d.name for d in class_dirs]
    if class_map is not None:
        mapping = _parse_class_map(Path(class_map))
        unknown = [n for n in names if n not in mapping]
        if unknown:
            raise TinyvimError(f"--data {root}: {len(unknown)} class folder(s) not in --class-map {class_map} "
                               f"({', '.join(unknown[:4])}{' ...' if len(unknown) > 4 else ''}): add them to the map")
        labels = [mapping[n] for n in names]
        width = max(mapping.values()) + 1
        class_names = [str(i) for i in range(width)]
        for name, idx in mapping.items():
            class_names[idx] = name
        layout, num_classes = "class-folders", None
    elif any(WNID_PATTERN.fullmatch(n) for n in names):
        index = {w: i for i, w in enumerate(imagenet_wnids())}
        unknown = [n for n in names if n not in index]
        if unknown:
            raise TinyvimError(f"--data {root}: {len(unknown)} class folder(s) are not ImageNet-1k WNIDs "
                               f"({', '.join(unknown[:4])}{' ...' if len(unknown) > 4 else ''}): remove them, or "
                               "pass --class-map for a custom label set")
        labels = [index[n] for n in names]
        layout, num_classes, class_names = "imagenet-folders", IMAGENET_CLASSES, list(imagenet_wnids())
    else:
        labels = list(range(len(names)))
        layout, num_classes, class_names = "class-folders", len(names), names
    items = tuple((p, y) for d, y in zip(class_dirs, labels) for p in _pictures(d))
    return LabelledSet(root, layout, items, tuple(class_names), num_classes)


def _parse_class_map(path: Path) -> dict[str, int]:
    mapping: dict[str, int] = {}
    for lineno, line in enumerate(_read_text(path, "--class-map").splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        parts = line.split()
        if len(parts) != 2 or not parts[1].isdigit():
            raise TinyvimError(f"--class-map {path} line {lineno}: {line.strip()[:60]!r} is not `folder index`")
        if parts[0] in mapping:
            raise TinyvimError(f"--class-map {path} line {lineno}: folder {parts[0]!r} is mapped twice")
        mapping[parts[0]] = int(parts[1])
    if not mapping:
        raise TinyvimError(f"--class-map {path}: no `folder index` lines")
    return mapping


def _match_labels(root: Path, label_file: Path, labels: dict[str, int], loose: list[Path],
                  layout: str, class_names: tuple[str, ...], num_classes: int | None) -> LabelledSet:
    """Pair the folder's pictures with `labels` (keyed by file name or by stem); a picture with
    no label is an error, a label whose picture is absent is skipped (a subset of a val set)."""
    items, unlabelled = [], []
    for p in loose:
        y = labels.get(p.name, labels.get(p.stem))
        (unlabelled.append(p.name) if y is None else items.append((p, y)))
    if unlabelled:
        raise TinyvimError(f"--data {root}: {len(unlabelled)} picture(s) have no line in {label_file.name} "
                           f"({', '.join(unlabelled[:3])}{' ...' if len(unlabelled) > 3 else ''})")
    return LabelledSet(root, layout, tuple(items), class_names, num_classes, len(labels) - len(items))


def _parse_val_txt(root: Path, path: Path, loose: list[Path]) -> LabelledSet:
    labels: dict[str, int] = {}
    for lineno, line in enumerate(_read_text(path, "label file").splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split()
        if len(parts) != 2 or not parts[1].isdigit():
            raise TinyvimError(f"{path} line {lineno}: {line.strip()[:60]!r} is not `name index` (a picture's file "
                               "name and its class index)")
        labels[parts[0]] = int(parts[1])
    return _match_labels(root, path, labels, loose, "val-txt", (), None)


def _parse_loc_csv(root: Path, path: Path, loose: list[Path]) -> LabelledSet:
    index = {w: i for i, w in enumerate(imagenet_wnids())}
    rows = list(csv.reader(_read_text(path, "label file").splitlines()))
    if not rows or [c.strip() for c in rows[0][:2]] != ["ImageId", "PredictionString"]:
        raise TinyvimError(f"{path}: not Kaggle's LOC_val_solution.csv (its header is `ImageId,PredictionString`)")
    labels: dict[str, int] = {}
    for lineno, row in enumerate(rows[1:], 2):
        if not row:
            continue
        wnid = row[1].split()[0] if len(row) == 2 and row[1].split() else ""
        if wnid not in index:
            raise TinyvimError(f"{path} line {lineno}: {','.join(row)[:60]!r} does not start its PredictionString "
                               "with an ImageNet-1k WNID")
        labels[row[0].strip()] = index[wnid]
    return _match_labels(root, path, labels, loose, "loc-csv", imagenet_wnids(), IMAGENET_CLASSES)
