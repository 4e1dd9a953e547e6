"""State tracking with negative eigenvalues: parity and modular counting, length extrapolation.

Trains small models on binary sequences of length <= 64 (labels at every position, so every
prefix length is a training length) and tests the label at the last position of sequences of
length 256 and 1,024 (plus 64, in distribution). Models: GatedLinearRNN with eigenvalue range
[-1, 1] and [0, 1], ParallelGRU (diagonal ParaRNN cell), torch.nn.LSTM and a small causal
Transformer (sinusoidal positions). Prints a table, writes a results JSON and a PNG.

    python examples/state_tracking.py                      # the full protocol (3 seeds)
    python examples/state_tracking.py --steps 200 --seeds 0 --tasks parity   # a quick look
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import sys
import time

import torch
from torch import nn

from graphseq.datasets.state_tracking import modular_counting, task_modulus
from graphseq.nn.seq import GatedLinearRNN, ParallelGRU

MODELS = ("glrnn[-1,1]", "glrnn[0,1]", "parallel_gru", "lstm", "transformer")


class _LSTM(nn.Module):
    def __init__(self, d: int) -> None:
        super().__init__()
        self.lstm = nn.LSTM(d, d, batch_first=True)

    def forward(self, x):
        return self.lstm(x)[0]


class _Attention(nn.Module):
    """Pre-norm causal self-attention + MLP block (the residual is added by the caller)."""

    def __init__(self, d: int, heads: int) -> None:
        super().__init__()
        self.layer = nn.TransformerEncoderLayer(
            d, heads, dim_feedforward=2 * d, dropout=0.0, batch_first=True, norm_first=True
        )

    def forward(self, x):
        T = x.shape[1]
        mask = nn.Transformer.generate_square_subsequent_mask(T, device=x.device)
        return self.layer(x, src_mask=mask, is_causal=True) - x


def _sinusoidal(T: int, d: int) -> torch.Tensor:
    pos = torch.arange(T, dtype=torch.float32)[:, None]
    freq = torch.exp(torch.arange(0, d, 2, dtype=torch.float32) * (-math.log(10000.0) / d))
    pe = torch.zeros(T, d)
    pe[:, 0::2] = torch.sin(pos * freq)
    pe[:, 1::2] = torch.cos(pos * freq)
    return pe


class Model(nn.Module):
    """Embedding -> layers x [x + mixer(LayerNorm(x))] -> LayerNorm -> linear readout."""

    def __init__(self, kind: str, classes: int, d: int, layers: int) -> None:
        super().__init__()
        self.kind = kind
        self.embed = nn.Embedding(2, d)
        self.norms = nn.ModuleList(nn.LayerNorm(d) for _ in range(layers))
        self.mixers = nn.ModuleList(self._mixer(kind, d) for _ in range(layers))
        self.norm = nn.LayerNorm(d)
        self.head = nn.Linear(d, classes)

    @staticmethod
    def _mixer(kind: str, d: int) -> nn.Module:
        if kind == "glrnn[-1,1]":
            return GatedLinearRNN(d, heads=8, eigenvalue_range=(-1.0, 1.0))
        if kind == "glrnn[0,1]":
            return GatedLinearRNN(d, heads=8, eigenvalue_range=(0.0, 1.0))
        if kind == "parallel_gru":
            return ParallelGRU(d, d, recurrence="diagonal")
        if kind == "lstm":
            return _LSTM(d)
        if kind == "transformer":
            return _Attention(d, heads=4)
        raise ValueError(f"unknown model {kind!r}")

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = self.embed(tokens)
        if self.kind == "transformer":
            x = x + _sinusoidal(tokens.shape[1], x.shape[-1]).to(x)
        for norm, mixer in zip(self.norms, self.mixers):
            x = x + mixer(norm(x))
        return self.head(self.norm(x))


@torch.no_grad()
def evaluate(model: Model, task: str, length: int, n: int, seed: int, batch: int) -> dict:
    model.eval()
    tokens, labels = modular_counting(n, length, task_modulus(task), seed=seed)
    final = positions = 0.0
    for i in range(0, n, batch):
        pred = model(tokens[i : i + batch]).argmax(-1)
        hit = (pred == labels[i : i + batch]).float()
        final += hit[:, -1].sum().item()
        positions += hit.mean(1).sum().item()
    model.train()
    return {"final": final / n, "all_positions": positions / n}


def run_one(kind: str, task: str, seed: int, args) -> dict:
    torch.manual_seed(seed)
    m = task_modulus(task)
    model = Model(kind, m, args.dim, args.layers)
    lr = args.lr_transformer if kind == "transformer" else args.lr
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, lr, total_steps=args.steps, pct_start=0.1)
    # training data: a fresh seeded batch per step (the train and test seeds never overlap)
    start = time.perf_counter()
    for step in range(args.steps):
        tokens, labels = modular_counting(
            args.batch, args.train_length, m, seed=1_000_000 * (seed + 1) + step
        )
        loss = nn.functional.cross_entropy(model(tokens).flatten(0, 1), labels.flatten())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
    train_s = time.perf_counter() - start
    result = {"model": kind, "task": task, "seed": seed, "train_s": round(train_s, 1)}
    result["final_loss"] = round(loss.item(), 4)
    for length in args.test_lengths:
        result[str(length)] = evaluate(
            model, task, length, args.test_samples, seed=7 + seed, batch=args.eval_batch
        )
    return result


def summarize(results: list[dict], args) -> dict:
    summary: dict = {}
    for r in results:
        key = f"{r['task']}|{r['model']}"
        summary.setdefault(key, {str(L): [] for L in args.test_lengths})
        for L in args.test_lengths:
            summary[key][str(L)].append(r[str(L)]["final"])
    out = {}
    for key, by_len in summary.items():
        out[key] = {
            L: {
                "mean": sum(v) / len(v),
                "min": min(v),
                "max": max(v),
                "n": len(v),
            }
            for L, v in by_len.items()
        }
    return out


def print_table(summary: dict, args) -> None:
    lengths = [str(L) for L in args.test_lengths]
    head = f"{'task':<8} {'model':<14} " + " ".join(f"{'T=' + L:>18}" for L in lengths)
    print(head)
    print("-" * len(head))
    for key, by_len in summary.items():
        task, model = key.split("|")
        cells = []
        for L in lengths:
            s = by_len[L]
            cells.append(f"{100 * s['mean']:6.1f} [{100 * s['min']:5.1f},{100 * s['max']:5.1f}]")
        print(f"{task:<8} {model:<14} " + " ".join(f"{c:>18}" for c in cells))
    print("(accuracy % of the label at the last position: mean [min, max] over seeds)")


def plot(summary: dict, args, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = list(dict.fromkeys(k.split("|")[0] for k in summary))
    fig, axes = plt.subplots(1, len(tasks), figsize=(5 * len(tasks), 3.6), squeeze=False)
    lengths = [str(L) for L in args.test_lengths]
    for ax, task in zip(axes[0], tasks):
        models = [k.split("|")[1] for k in summary if k.startswith(task + "|")]
        width = 0.8 / max(len(lengths), 1)
        for j, L in enumerate(lengths):
            means = [100 * summary[f"{task}|{m}"][L]["mean"] for m in models]
            lo = [
                100 * (summary[f"{task}|{m}"][L]["mean"] - summary[f"{task}|{m}"][L]["min"])
                for m in models
            ]
            hi = [
                100 * (summary[f"{task}|{m}"][L]["max"] - summary[f"{task}|{m}"][L]["mean"])
                for m in models
            ]
            xs = [i + (j - (len(lengths) - 1) / 2) * width for i in range(len(models))]
            ax.bar(xs, means, width, yerr=[lo, hi], capsize=2, label=f"T={L}")
        chance = 100 / task_modulus(task)
        ax.axhline(chance, color="gray", ls="--", lw=0.8)
        ax.set_xticks(range(len(models)), models, rotation=30, ha="right", fontsize=8)
        ax.set_ylim(0, 105)
        ax.set_title(f"{task} (trained on T<={args.train_length})")
        ax.set_ylabel("last-position accuracy (%)")
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    tmp = path + ".tmp.png"
    fig.savefig(tmp, dpi=120)  # then renamed: a killed run leaves the previous PNG whole
    plt.close(fig)
    os.replace(tmp, path)


def _worker(job):
    task, kind, seed, args = job
    torch.set_num_threads(args.threads)
    return run_one(kind, task, seed, args)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--tasks", nargs="+", default=["parity", "mod3", "mod5"])
    p.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--steps", type=int, default=600)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--train-length", type=int, default=64)
    p.add_argument("--test-lengths", nargs="+", type=int, default=[64, 256, 1024])
    p.add_argument("--test-samples", type=int, default=256)
    p.add_argument("--eval-batch", type=int, default=64)
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--lr-transformer", type=float, default=1e-3)
    p.add_argument("--threads", type=int, default=1, help="torch threads per run")
    p.add_argument("--workers", type=int, default=1, help="runs trained in parallel processes")
    p.add_argument("--out", default="runs/state_tracking")
    args = p.parse_args(argv)
    # every value is checked before the first run trains (a bad one used to stop the script
    # only when its run came, losing the finished runs, or inside torch naming no flag)
    for task in args.tasks:
        try:
            task_modulus(task)
        except ValueError as err:
            p.error(f"--tasks: {err}")
    for flag in ("steps", "batch", "train_length", "test_samples", "eval_batch", "dim",
                 "layers", "threads", "workers"):  # fmt: skip
        if getattr(args, flag) < 1:
            p.error(f"--{flag.replace('_', '-')} must be >= 1, got {getattr(args, flag)}")
    if min(args.test_lengths) < 1:
        p.error(f"--test-lengths must all be >= 1, got {args.test_lengths}")
    for flag in ("lr", "lr_transformer"):
        if not (math.isfinite(getattr(args, flag)) and getattr(args, flag) > 0):
            p.error(f"--{flag.replace('_', '-')} must be a finite number > 0, got "
                    f"{getattr(args, flag)}")  # fmt: skip
    # a repeated value is the same run (or column) counted again: the summary's n and table
    for flag in ("seeds", "tasks", "models", "test_lengths"):
        values = getattr(args, flag)
        if len(set(values)) != len(values):
            p.error(f"--{flag.replace('_', '-')} must be distinct (a repeated value is the same "
                    f"run counted twice), got {values}")  # fmt: skip
    if min(args.seeds) < 0:  # seed -1 drew a training batch from the test set's seed (6),
        # and seeds <= -2 a negative data seed the generator refuses once the run came
        p.error(f"--seeds must all be >= 0, got {args.seeds}")
    torch.set_num_threads(args.threads)
    os.makedirs(args.out, exist_ok=True)
    print("command: python", " ".join(sys.argv))
    print(
        f"torch {torch.__version__}, {platform.processor() or platform.machine()}, "
        f"{torch.get_num_threads()} threads"
    )
    results = []
    runs = [(t, k, s) for t in args.tasks for k in args.models for s in args.seeds]
    start = time.perf_counter()
    jobs = [(task, kind, seed, args) for task, kind, seed in runs]
    if args.workers > 1:
        import multiprocessing as mp

        pool = mp.get_context("spawn").Pool(args.workers)
        it = pool.imap(_worker, jobs)
    else:
        pool, it = None, map(_worker, jobs)
    for i, r in enumerate(it, 1):
        task, kind, seed = r["task"], r["model"], r["seed"]
        results.append(r)
        accs = " ".join(f"T={L}:{100 * r[str(L)]['final']:.1f}" for L in args.test_lengths)
        print(
            f"[{i}/{len(runs)}] {task} {kind} seed={seed} loss={r['final_loss']} {accs} "
            f"({r['train_s']}s)",
            flush=True,
        )
    if pool is not None:
        pool.close()
    summary = summarize(results, args)
    print()
    print_table(summary, args)
    from graphseq.train.io import machine_info, write_json

    payload = {
        "command": sys.argv if argv is None else ["state_tracking.py", *argv],
        "config": vars(args),
        "torch": torch.__version__,
        "machine": machine_info(),
        "wall_s": round(time.perf_counter() - start, 1),
        "runs": results,
        "summary": summary,
    }
    write_json(os.path.join(args.out, "state_tracking.json"), payload)  # atomically
    plot(summary, args, os.path.join(args.out, "state_tracking.png"))
    print(f"wrote {args.out}/state_tracking.json and {args.out}/state_tracking.png")


if __name__ == "__main__":
    main()
