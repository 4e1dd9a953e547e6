"""Arrow Pointing Extrapolation ("half" protocol): PLSTMVision against a same-size ViT.

Both models are trained on 96x96 images (patch 8: a 12x12 token grid) and tested at 96, 144,
192 and 288 pixels (12x12 up to 36x36 tokens) with the same absolute object sizes, so larger
test images mean longer distances between arrow and disk (pLSTM paper §5.1; the brief's
"half" protocol of `graphseq.datasets.arrow_pointing`). The ViT is a pre-norm
``torch.nn.TransformerEncoder`` with a CLS token and a learnable positional embedding that is
bicubically interpolated at other resolutions (as the paper's ViT baseline); its depth equals
the number of pLSTM layers and its MLP width is chosen so that the two parameter counts agree
within 10% (checked). Training: AdamW (wd 0.05), linear warm-up for 5% of the steps then
cosine decay, gradient clipping at 1, cross-entropy, no augmentation.

    python examples/arrow_pointing.py                          # defaults sized for a 2-core CPU
    python examples/arrow_pointing.py --train-size 2000 --epochs 1 --seeds 0   # a quick look

It runs on a GPU when there is one (``--device auto``, the default; ``--device cpu`` forces
the CPU): the images stay on the host and go to the device batch by batch.

Writes ``<out>/arrow_pointing.json`` (per seed and model: accuracy per test resolution, time
per epoch, parameter counts, the machine) and ``<out>/arrow_pointing.png`` (accuracy against
test resolution, mean and min/max over seeds).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from graphseq.datasets.arrow_pointing import ArrowPointing
from graphseq.nn.plstm import PLSTMVision
from graphseq.train.io import machine_info, write_json


class ViT(nn.Module):
    """Pre-norm ViT: patch conv, CLS token, interpolated learnable pos-emb, CLS head."""

    def __init__(self, image_size, patch_size, num_classes, dim, heads, depth, mlp_dim):
        super().__init__()
        self.patch_size = patch_size
        grid = image_size // patch_size
        self.patch_embed = nn.Conv2d(3, dim, patch_size, stride=patch_size)
        self.cls = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.randn(1, dim, grid, grid) * 0.02)
        layer = nn.TransformerEncoderLayer(
            dim, heads, mlp_dim, dropout=0.0, activation="gelu", batch_first=True,
            norm_first=True,
        )  # fmt: skip
        self.encoder = nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, images):
        x = self.patch_embed(images)  # [B, D, X, Y]
        pos = self.pos_embed
        if pos.shape[-2:] != x.shape[-2:]:
            pos = F.interpolate(pos, size=x.shape[-2:], mode="bicubic", align_corners=False)
        x = (x + pos).flatten(2).transpose(1, 2)  # [B, XY, D]
        x = torch.cat([self.cls.expand(x.shape[0], -1, -1), x], 1)
        return self.head(self.norm(self.encoder(x))[:, 0])


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def build_models(args):
    plstm = PLSTMVision(
        args.train_resolution, args.patch, 2, dim=args.dim, heads=args.heads, depth=args.depth,
        gate_weight_std=args.gate_std, pooling=args.pooling,
    )  # fmt: skip
    target = n_params(plstm)
    best = None
    for mlp_dim in range(args.dim, 16 * args.dim + 1, 4):
        vit = ViT(args.train_resolution, args.patch, 2, args.dim, args.vit_heads,
                  2 * args.depth, mlp_dim)  # fmt: skip
        gap = abs(n_params(vit) - target) / target
        if best is None or gap < best[0]:
            best = (gap, mlp_dim)
    vit = ViT(args.train_resolution, args.patch, 2, args.dim, args.vit_heads, 2 * args.depth,
              best[1])  # fmt: skip
    if abs(n_params(vit) - target) > 0.1 * target:
        raise SystemExit(f"cannot match parameter counts: {n_params(vit)} vs {target}")
    return {"plstm": plstm, "vit": vit}


def evaluate(model, data, batch_size, device=None):
    device = torch.device("cpu") if device is None else device
    model.eval()
    x, y = data.tensors()
    correct = torch.zeros((), dtype=torch.long, device=device)
    with torch.no_grad():
        for i in range(0, len(y), batch_size):
            xb, yb = x[i : i + batch_size].to(device), y[i : i + batch_size].to(device)
            correct += (model(xb).argmax(-1) == yb).sum()
    model.train()
    return float(correct) / max(1, len(y))


def train(model, train_set, args, seed, log, device=None):
    device = torch.device("cpu") if device is None else device
    torch.manual_seed(seed)
    x, y = train_set.tensors()
    n = len(y)
    steps_per_epoch = math.ceil(n / args.batch_size)
    total = steps_per_epoch * args.epochs
    warmup = max(1, int(0.05 * total))
    decay = [p for name, p in model.named_parameters() if p.dim() >= 2]
    other = [p for name, p in model.named_parameters() if p.dim() < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.05}, {"params": other, "weight_decay": 0.0}],
        lr=args.lr,
    )
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt,
        lambda s: (
            (s + 1) / warmup
            if s < warmup
            else 0.5 * (1 + math.cos(math.pi * (s - warmup) / max(1, total - warmup)))
        ),
    )
    gen = torch.Generator().manual_seed(seed)
    epoch_times = []
    for epoch in range(args.epochs):
        t0 = time.perf_counter()
        perm = torch.randperm(n, generator=gen)
        running, seen = torch.zeros((), device=device), 0  # summed on the device: no sync
        for step in range(steps_per_epoch):
            idx = perm[step * args.batch_size : (step + 1) * args.batch_size]
            loss = F.cross_entropy(model(x[idx].to(device)), y[idx].to(device))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            running += loss.detach() * len(idx)
            seen += len(idx)
            if step % 50 == 0:
                log(f"  epoch {epoch} step {step}/{steps_per_epoch} loss "
                    f"{float(running) / seen:.4f}")  # fmt: skip
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        epoch_times.append(time.perf_counter() - t0)
        loss_mean = float(running) / seen
        log(f"  epoch {epoch} done in {epoch_times[-1]:.1f}s, train loss {loss_mean:.4f}")
    return epoch_times


def plot(path, results, resolutions, train_resolution):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 4))
    for name, label in (("plstm", "pLSTM (PLSTMVision)"), ("vit", "ViT")):
        runs = [r for r in results if name in r]  # a run may have trained one model only
        if not runs:
            continue
        accs = [[r[name]["accuracy"][str(res)] for r in runs] for res in resolutions]
        mean = [sum(a) / len(a) for a in accs]
        ax.plot(resolutions, mean, marker="o", label=label)
        ax.fill_between(resolutions, [min(a) for a in accs], [max(a) for a in accs], alpha=0.2)
    ax.axvline(train_resolution, color="grey", ls=":", label="train resolution")
    ax.set_xlabel("test resolution (pixels, square)")
    ax.set_ylabel("test accuracy")
    ax.set_xticks(resolutions)
    ax.set_title(f"Arrow pointing (half protocol), {len(results)} run(s)", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def summarize(results, resolutions, log):
    for res in resolutions:
        line = [f"{res}px"]
        for name in ("plstm", "vit"):
            accs = [r[name]["accuracy"][str(res)] for r in results if name in r]
            if accs:
                mean = sum(accs) / len(accs)
                line.append(f"{name} {mean:.4f} (min {min(accs):.4f}, max {max(accs):.4f})")
        log("  ".join(line))
    for name in ("plstm", "vit"):
        times = [t for r in results if name in r for t in r[name]["epoch_seconds"]]
        if times:
            log(f"{name}: {sum(times) / len(times):.1f}s per epoch (mean of {len(times)})")


#: the settings runs must share to be merged (the seed and the models trained may differ)
MERGE_KEYS = ("train_resolution", "test_resolutions", "train_size", "test_size", "epochs",
              "batch_size", "lr", "patch", "dim", "heads", "vit_heads", "depth", "pooling",
              "gate_std")  # fmt: skip


def merge(paths, out):
    """Combine the result files of earlier runs of one setting into one JSON and PNG.

    A merged file (this function's output) may be given again: its runs are merged.

    Raises:
        ValueError: a file is unreadable or not a results file, two files differ in a setting
            of ``MERGE_KEYS``, or a (seed, model) run occurs twice.
    """
    files, names = [], []
    for p in paths:
        try:
            data = json.loads(Path(p).read_text())
        except (OSError, ValueError) as err:
            raise ValueError(f"cannot read {p}: {err}") from err
        merged = isinstance(data, dict) and "args" not in data and "runs" in data
        for f in data["runs"] if merged else [data]:
            if not isinstance(f, dict) or "args" not in f or "results" not in f:
                raise ValueError(f"{p} is not a results file of this script (no args/results)")
            files.append(f)
            names.append(p)
    first = files[0]["args"]
    for p, f in zip(names[1:], files[1:], strict=True):
        diff = [k for k in MERGE_KEYS if f["args"].get(k) != first.get(k)]
        if diff:
            raise ValueError(
                f"{p} differs from {names[0]} in {', '.join(diff)}; merge runs of one setting only"
            )
    results = [r for f in files for r in f["results"]]
    seen = set()
    for r in results:  # a run given twice (a file named twice) would count twice in the mean
        for name in ("plstm", "vit"):
            if name in r and (r["seed"], name) in seen:
                raise ValueError(f"seed {r['seed']} of {name} is in the files more than once")
            if name in r:
                seen.add((r["seed"], name))
    resolutions = first["test_resolutions"]
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "arrow_pointing.json", {"runs": files, "results": results})
    plot(out / "arrow_pointing.png", results, resolutions, first["train_resolution"])
    summarize(results, resolutions, print)


def time_steps(args, device=None):
    """Best-of-N wall and CPU seconds of one training step per model, same batch, same
    process (the CPU time is the steadier figure on a shared machine)."""
    device = torch.device("cpu") if device is None else device
    data = ArrowPointing(args.batch_size, args.train_resolution, seed=0)
    x, y = (t.to(device) for t in data.tensors())
    torch.manual_seed(0)
    for name, model in build_models(args).items():
        model.to(device)
        opt = torch.optim.AdamW(model.parameters(), lr=args.lr)
        best = (math.inf, math.inf)
        for i in range(args.time_steps + 1):  # the first step is an untimed warm-up
            t0, c0 = time.perf_counter(), time.process_time()
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            if i > 0:
                best = (
                    min(best[0], time.perf_counter() - t0),
                    min(best[1], time.process_time() - c0),
                )
        print(f"{name}: {n_params(model)} parameters, batch {args.batch_size} at "
              f"{args.train_resolution}px: {best[0]:.3f} s wall, {best[1]:.3f} s CPU per "
              "training step", flush=True)  # fmt: skip


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--train-size", type=int, default=6000)
    p.add_argument("--test-size", type=int, default=1000, help="images per test resolution")
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--dim", type=int, default=32)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--vit-heads", type=int, default=4)
    p.add_argument("--depth", type=int, default=1, help="PD block pairs (2 layers each)")
    p.add_argument("--patch", type=int, default=8)
    p.add_argument("--pooling", default="corners", choices=["corners", "mean"],
                   help="PLSTMVision's pooling (the paper's: corners)")  # fmt: skip
    p.add_argument("--gate-std", type=float, default=0.0,
                   help="PLSTMVision's gate_weight_std (0: the paper's zero init)")  # fmt: skip
    p.add_argument("--train-resolution", type=int, default=96)
    p.add_argument("--test-resolutions", type=int, nargs="+", default=[96, 144, 192, 288])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--models", nargs="+", default=["plstm", "vit"], choices=["plstm", "vit"])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument(
        "--device", default="auto",
        help="auto (CUDA if available, else CPU), cpu, cuda, cuda:1, ...",
    )  # fmt: skip
    p.add_argument("--out", default="runs/arrow_pointing")
    p.add_argument(
        "--merge",
        nargs="+",
        metavar="JSON",
        help="only combine the results files of earlier runs (e.g. one per seed) into "
        "<out>/arrow_pointing.json and the PNG",
    )
    p.add_argument(
        "--time-steps",
        type=int,
        default=0,
        metavar="N",
        help="only time N training steps (forward, backward, optimizer) of each model on one "
        "batch of training images, print the best wall and CPU seconds per step, and exit",
    )
    args = p.parse_args(argv)
    for flag in ("train_size", "test_size", "batch_size", "epochs"):
        if getattr(args, flag) < 1:
            p.error(f"--{flag.replace('_', '-')} must be >= 1, got {getattr(args, flag)}")
    if args.merge:
        try:
            return merge(args.merge, Path(args.out))
        except ValueError as err:
            p.error(f"--merge: {err}")
    if args.device == "auto":
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        try:
            device = torch.device(args.device)
        except RuntimeError as err:
            p.error(f"--device: {err}")
        if device.type == "cuda" and not torch.cuda.is_available():
            p.error(f"--device {args.device}: CUDA is not available on this machine")
    torch.set_num_threads(args.threads)
    if args.time_steps:
        return time_steps(args, device)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    def log(msg):
        print(msg, flush=True)

    t0 = time.perf_counter()
    tests = {
        res: ArrowPointing(args.test_size, res, seed=200_000 + res) for res in args.test_resolutions
    }
    log(f"generated test sets in {time.perf_counter() - t0:.1f}s")
    results = []
    for seed in args.seeds:
        train_set = ArrowPointing(args.train_size, args.train_resolution, seed=seed)
        torch.manual_seed(seed)
        models = build_models(args)
        entry = {"seed": seed}
        for name in args.models:
            model = models[name]
            model.to(device)
            log(f"seed {seed} {name}: {n_params(model)} parameters, on {device}")
            epoch_times = train(model, train_set, args, seed, log, device)
            acc = {}
            for res, data in tests.items():
                t = time.perf_counter()
                acc[str(res)] = evaluate(model, data, args.batch_size, device)
                log(f"  test {res}px: acc {acc[str(res)]:.4f} ({time.perf_counter() - t:.1f}s)")
            entry[name] = {
                "params": n_params(model),
                "accuracy": acc,
                "epoch_seconds": epoch_times,
            }
        results.append(entry)
        write_json(out / "arrow_pointing.json", {
            "args": vars(args), "command": " ".join(sys.argv), "machine": machine_info(),
            "device": str(device),
            "results": results,
        })  # fmt: skip
    plot(out / "arrow_pointing.png", results, args.test_resolutions, args.train_resolution)
    summarize(results, args.test_resolutions, log)


if __name__ == "__main__":
    main()
