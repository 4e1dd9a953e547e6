"""MNIST with PLSTMVision: a real-image check of the 2D pLSTM layer.

Reads ``mnist.npz`` (``x_train [60000, 28, 28]``, ``y_train``, ``x_test``, ``y_test``, uint8)
from ``--data`` (default: ``mnist.npz`` in ``$GRAPHSEQ_DATA``, the data directory of every
other loader, else in ``$GRAPHSEQ_TEST_DATA``, else ``../shared/data/mnist.npz`` beside the
repository); nothing is downloaded. Patch 4 gives a 7x7 token grid. Training:
AdamW (wd 0.05), linear warm-up for 5% of the steps then cosine decay, gradient clipping at 1,
random shifts of up to ``--shift`` pixels. Test accuracy is reported after every epoch but
never used for selection or early stopping: the result is the last epoch's.

    python examples/mnist.py                       # 10 epochs: 98.63% (BENCHMARKS.md)
    python examples/mnist.py --epochs 1 --train-size 5000   # a quick look

Writes ``<out>/mnist.json`` (test accuracy, time per epoch, parameters, machine) and
``<out>/mnist.png`` (train loss and test accuracy per epoch).
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from graphseq.datasets.continual import load_mnist
from graphseq.nn.plstm import PLSTMVision
from graphseq.train.io import machine_info, plot_curves, write_json

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = Path(
    os.environ.get("GRAPHSEQ_DATA")
    or os.environ.get("GRAPHSEQ_TEST_DATA")
    or REPO.parent / "shared" / "data"
).expanduser()


def load(path: Path):
    if not path.exists():
        raise SystemExit(
            f"mnist.npz not found at {path}; pass --data or set GRAPHSEQ_DATA to the folder "
            "holding it (keys x_train, y_train, x_test, y_test)"
        )
    d = load_mnist(path)  # a damaged file is a ValueError naming it

    def prep(x):
        return ((torch.from_numpy(x).float() / 255.0 - 0.1307) / 0.3081).unsqueeze(1)

    return (
        prep(d["x_train"]),
        torch.from_numpy(d["y_train"]).long(),
        prep(d["x_test"]),
        torch.from_numpy(d["y_test"]).long(),
    )


def shift(x: torch.Tensor, max_shift: int, gen: torch.Generator) -> torch.Tensor:
    """Translate every image by its own random offset in [-max_shift, max_shift]^2 (zero fill
    at the background value)."""
    if max_shift == 0:
        return x
    B, _, H, W = x.shape
    pad = F.pad(x, (max_shift,) * 4, value=float(x.min()))
    dx = torch.randint(0, 2 * max_shift + 1, (B,), generator=gen)
    dy = torch.randint(0, 2 * max_shift + 1, (B,), generator=gen)
    rows = (dy[:, None] + torch.arange(H))[:, :, None].expand(B, H, W)
    cols = (dx[:, None] + torch.arange(W))[:, None, :].expand(B, H, W)
    return pad[torch.arange(B)[:, None, None], 0, rows, cols].unsqueeze(1)


def accuracy(model, x, y, batch_size):
    model.eval()
    correct = 0
    with torch.no_grad():
        for i in range(0, len(y), batch_size):
            correct += int((model(x[i : i + batch_size]).argmax(-1) == y[i : i + batch_size]).sum())
    model.train()
    return correct / len(y)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", type=Path, default=DEFAULT_DATA / "mnist.npz")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--train-size", type=int, default=60000)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--dim", type=int, default=48)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--depth", type=int, default=1)
    p.add_argument("--patch", type=int, default=4)
    p.add_argument("--shift", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default="runs/mnist")
    args = p.parse_args(argv)
    for flag in ("epochs", "train_size", "batch_size", "threads"):
        if getattr(args, flag) < 1:
            p.error(f"--{flag.replace('_', '-')} must be >= 1, got {getattr(args, flag)}")
    if args.shift < 0:
        p.error(f"--shift must be >= 0, got {args.shift}")
    if not (math.isfinite(args.lr) and args.lr > 0):
        p.error(f"--lr must be a finite number > 0, got {args.lr}")
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    # the model first: a bad --patch / --heads / --dim is refused before the data is read (the
    # data loading draws no random numbers, so the initial weights are unchanged)
    model = PLSTMVision(
        28, args.patch, 10, in_channels=1, dim=args.dim, heads=args.heads, depth=args.depth
    )
    x_train, y_train, x_test, y_test = load(args.data)
    if args.train_size > len(y_train):  # a silent cut would record a size that never ran
        p.error(f"--train-size {args.train_size} is more than the {len(y_train)} training "
                f"images in {args.data}")  # fmt: skip
    x_train, y_train = x_train[: args.train_size], y_train[: args.train_size]
    n_params = sum(p.numel() for p in model.parameters())
    print(f"{model}: {n_params} parameters", flush=True)
    decay = [p for p in model.parameters() if p.dim() >= 2]
    other = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.05}, {"params": other, "weight_decay": 0.0}],
        lr=args.lr,
    )
    n = len(y_train)
    steps = math.ceil(n / args.batch_size)
    total = steps * args.epochs
    warmup = max(1, int(0.05 * total))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt,
        lambda s: (
            (s + 1) / warmup
            if s < warmup
            else 0.5 * (1 + math.cos(math.pi * (s - warmup) / max(1, total - warmup)))
        ),
    )
    gen = torch.Generator().manual_seed(args.seed)
    history = []
    for epoch in range(args.epochs):
        t0 = time.perf_counter()
        perm = torch.randperm(n, generator=gen)
        running = 0.0
        for step in range(steps):
            idx = perm[step * args.batch_size : (step + 1) * args.batch_size]
            loss = F.cross_entropy(model(shift(x_train[idx], args.shift, gen)), y_train[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            running += float(loss.detach()) * len(idx)
            if step % 100 == 0:
                print(f"epoch {epoch} step {step}/{steps} loss {loss.item():.4f}", flush=True)
        seconds = time.perf_counter() - t0
        acc = accuracy(model, x_test, y_test, 500)
        history.append(
            {"epoch": epoch + 1, "train_loss": running / n, "test_accuracy": acc,
             "epoch_seconds": seconds}
        )  # fmt: skip
        print(f"epoch {epoch} done in {seconds:.1f}s: test accuracy {acc:.4f}", flush=True)
        write_json(out / "mnist.json", {
            "args": {k: str(v) for k, v in vars(args).items()}, "command": " ".join(sys.argv),
            "params": n_params, "history": history, "machine": machine_info(),
        })  # fmt: skip
    plot_curves(out / "mnist.png", history, metric="accuracy", title="PLSTMVision on MNIST")


if __name__ == "__main__":
    main()
