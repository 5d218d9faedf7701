"""`tinyvim info`'s figures (parameters, MACs, the SS2D table) without importing torch when they
are already known.

Counting builds the model and traces it under torch's FlopCounterMode: seconds, most of them
importing torch. The figures depend only on the architecture, the variant, classifier or
backbone, and the image size - not on random weights - so they are looked up:

1. in FACTS (model_facts.json beside this file, shipped): S, B and L, classifier and backbone,
   at 224x224 - `tinyvim info` with no options answers from it in well under half a second;
2. in the cache (<TINYVIM_CACHE_DIR or ~/.cache/tinyvim>/info), filled by earlier runs;
3. else computed, and cached.

Each entry carries the fingerprint of the files that define the architecture and how it is
counted (ARCHITECTURE_FILES): an edit there makes every stored figure stale, and it is computed
again (tests/test_info_cli.py fails until FACTS is rewritten: `python -m tinyvim.tools.model_info`).
A checkpoint can change the figures (its head's class count, a distillation head or not), so a
run with one always computes.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from tinyvim.contract import DEFAULT_IMG_SIZE, VARIANTS, ModelSpec, format_size
from tinyvim.lazy import lazy_import
from tinyvim.plugins.cpu_twin import cache_dir
from tinyvim.utils import atomic_write_json

models = lazy_import("tinyvim.model")
complexity = lazy_import("tinyvim.model.complexity")

FACTS = Path(__file__).with_name("model_facts.json")
#: the model's architecture and its MAC counting: what the stored figures depend on
MODEL_DIR = Path(__file__).resolve().parents[1] / "model"
ARCHITECTURE_FILES = ("tinyvim.py", "layers.py", "ss2d.py", "complexity.py")


def architecture_fingerprint() -> str:
    """sha256 (16 hex digits) of ARCHITECTURE_FILES' contents: read, not imported (no torch)."""
    digest = hashlib.sha256()
    for name in ARCHITECTURE_FILES:
        digest.update(name.encode() + b"\0" + (MODEL_DIR / name).read_bytes())
    return digest.hexdigest()[:16]


def facts_key(model: ModelSpec, img_size: tuple[int, int]) -> str:
    return f"{model.variant}-{'backbone' if model.backbone else 'classifier'}-{format_size(img_size)}"


def compute_report(model: ModelSpec, img_size: tuple[int, int]) -> dict:
    """Build the model (unfused and re-parameterized) and count: imports torch."""
    net = models.build_model(model)
    fused = models.reparameterize(net)
    total = models.count_parameters(net)
    head = getattr(net, "dist_head", None)
    dist = sum(p.numel() for p in head.parameters()) if head is not None else 0
    return {"params": total, "params_without_dist_head": total - dist, "params_fused": models.count_parameters(fused),
            "gmacs": complexity.count_macs(net, img_size) / 1e9, "gmacs_fused": complexity.count_macs(fused, img_size) / 1e9,
            "ss2d": complexity.ss2d_table(net, img_size)}


def _read(path: Path, key: str, fingerprint: str) -> dict | None:
    """The entry `key` of a figures file written for this `fingerprint`; None when absent, stale
    or unreadable (a damaged cache file is recomputed, never trusted)."""
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(doc, dict) or doc.get("fingerprint") != fingerprint:
        return None
    entry = doc.get("reports", {}).get(key)
    return entry if isinstance(entry, dict) and {"params", "gmacs", "ss2d"} <= set(entry) else None


def model_report(model: ModelSpec, img_size: tuple[int, int] = DEFAULT_IMG_SIZE) -> tuple[dict, str]:
    """(figures, where they came from: "facts", "cache" or "computed")."""
    if not model.random_weights:
        return compute_report(model, img_size), "computed"
    key, fingerprint = facts_key(model, img_size), architecture_fingerprint()
    found = _read(FACTS, key, fingerprint)
    if found is not None:
        return found, "facts"
    try:
        cached = cache_dir().parent / "info" / f"{key}-{fingerprint}.json"
    except Exception:  # noqa: BLE001 - an unusable TINYVIM_CACHE_DIR only costs the cache
        cached = None
    found = _read(cached, key, fingerprint) if cached is not None else None
    if found is not None:
        return found, "cache"
    report = compute_report(model, img_size)
    if cached is not None:
        try:
            os.makedirs(cached.parent, exist_ok=True)
            atomic_write_json(cached, {"fingerprint": fingerprint, "reports": {key: report}})
        except OSError:
            pass      # a read-only cache folder: computed again next time
    return report, "computed"


def write_facts(path: Path = FACTS) -> dict:
    """Compute FACTS: every variant, classifier and backbone, at DEFAULT_IMG_SIZE."""
    reports = {facts_key(spec, DEFAULT_IMG_SIZE): compute_report(spec, DEFAULT_IMG_SIZE)
               for spec in (ModelSpec(v, backbone=b) for v in VARIANTS for b in (False, True))}
    doc = {"fingerprint": architecture_fingerprint(), "reports": reports}
    atomic_write_json(path, doc)
    return doc


if __name__ == "__main__":     # python -m tinyvim.tools.model_info: rewrite FACTS after an architecture change
    print(f"wrote {FACTS} ({len(write_facts()['reports'])} reports, fingerprint {architecture_fingerprint()})")
