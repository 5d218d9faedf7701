#!/usr/bin/env python
"""Train the test fixture: TinyViM-S at 64x64 on scikit-learn's digits (tests/digits_data.py),
a 10-class head without a distillation head, AdamW, on the CPU in a few minutes.

Deterministic: fixed seeds, torch.use_deterministic_algorithms, 2 intra-op threads, batches
drawn from a seeded generator. The scan runs as the inline parallel PyTorch scan (the custom
op has no backward). Training pictures go through the same preprocessing `tinyvim evaluate`
applies (tinyvim.tools.inputs.preprocess_image, crop-pct 0.875), so train and test agree.

Writes tests/data/tinyvim_s_digits64.pth: {'model': fp16 state dict, 'fixture': facts about
the run}, which `create_model(checkpoint=...)` reads with weights_only=True (floats upcast,
10 classes read from head.weight).

    PYTHONPATH=. .venv/bin/python scripts/train_fixture.py [--epochs 2] [--out PATH]
"""
from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
import time
from pathlib import Path

# Waiting OpenMP workers sleep instead of spinning: on a shared machine (more runnable threads than
# cores) spinning made an epoch ~4x slower here (535 s vs 137 s). Set before torch starts OpenMP;
# it changes no result.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from digits_data import FIXTURE_CHECKPOINT, FIXTURE_SIZE, HELDOUT_EVERY, NUM_CLASSES, write_pictures  # noqa: E402

from tinyvim.model import TinyViM  # noqa: E402
from tinyvim.ops.scan import scan_implementation  # noqa: E402
from tinyvim.tools.inputs import DEFAULT_CROP_PCT, preprocess_image  # noqa: E402
from tinyvim.utils import atomic_output  # noqa: E402


def preprocessed(which: str) -> tuple[torch.Tensor, torch.Tensor]:
    """A split as (N, 3, 64, 64) float32 tensors through evaluate's preprocessing, and labels."""
    with tempfile.TemporaryDirectory() as tmp:
        files = write_pictures(tmp, which, layout="flat")
        x = np.stack([preprocess_image(Path(tmp) / name, (FIXTURE_SIZE, FIXTURE_SIZE), DEFAULT_CROP_PCT)
                      for name, _ in files])
    return torch.from_numpy(x), torch.tensor([y for _, y in files])


@torch.no_grad()
def accuracy(model, x, y, batch=128) -> float:
    model.eval()
    hits = sum(int((model(x[i:i + batch]).argmax(1) == y[i:i + batch]).sum()) for i in range(0, len(x), batch))
    return hits / len(x)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=str(FIXTURE_CHECKPOINT))
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    torch.use_deterministic_algorithms(True, warn_only=True)
    xtr, ytr = preprocessed("train")
    xte, yte = preprocessed("heldout")
    model = TinyViM("s", num_classes=NUM_CLASSES, distillation=False)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.05)
    steps = args.epochs * math.ceil(len(xtr) / args.batch)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=args.lr, total_steps=steps, pct_start=0.15)
    gen = torch.Generator().manual_seed(args.seed)
    start = time.perf_counter()
    with scan_implementation("parallel", inline=True):
        for epoch in range(args.epochs):
            model.train()
            order = torch.randperm(len(xtr), generator=gen)
            total = 0.0
            for i in range(0, len(xtr), args.batch):
                sel = order[i:i + args.batch]
                # +-4 px shifts (a 1/16 of the picture): the digits are centred, the held-out ones less so
                dx, dy = (int(v) for v in torch.randint(-4, 5, (2,), generator=gen))
                xb = torch.roll(xtr[sel], shifts=(dy, dx), dims=(2, 3))
                loss = F.cross_entropy(model(xb), ytr[sel], label_smoothing=0.1)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                total += float(loss.detach()) * len(sel)
            print(f"epoch {epoch + 1}/{args.epochs}: loss {total / len(xtr):.3f}, held-out top-1 "
                  f"{accuracy(model, xte, yte):.4f}, {time.perf_counter() - start:.0f} s", flush=True)
        top1 = accuracy(model, xte, yte)
    state = {k: (v.half() if v.is_floating_point() else v) for k, v in model.state_dict().items()}
    fixture = {"dataset": "sklearn.datasets.load_digits", "heldout_rule": f"index % {HELDOUT_EVERY} == 0",
               "img_size": FIXTURE_SIZE, "crop_pct": DEFAULT_CROP_PCT, "epochs": args.epochs, "seed": args.seed,
               "heldout_top1_fp32_training": top1, "train_seconds": time.perf_counter() - start,
               "torch": str(torch.__version__)}   # a plain str: TorchVersion is not weights_only-loadable
    with atomic_output(args.out) as tmp:
        torch.save({"model": state, "fixture": fixture}, tmp)
    print(f"wrote {args.out} ({os.path.getsize(args.out) / 1e6:.1f} MB), held-out top-1 {top1:.4f}")


if __name__ == "__main__":
    main()
