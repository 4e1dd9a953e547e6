"""Second minimum of a multiset: the first task of the LCM paper, with length generalisation.

Multisets of 8-bit integers (bit vectors) of sizes 2-16 are the training data; the model
predicts the bits of the second smallest element and is tested on sets of size 32 and 64
(exact match of all bits). Aggregators: sum, max, PyG's GRUAggregation and LCMAggregation,
and graphseq's LCMAggregation (GRU and MLP cells) and RecurrentAggregation (GRU), all in the
same encoder -> aggregator -> decoder network (the one of PyG's example
``examples/lcm_aggr_2nd_min.py``, see below). Every seed regenerates the data
(``graphseq.datasets.sets.second_minimum``), the elements of every set are shuffled each
epoch (the paper's augmentation, for every aggregator), and each run uses one CPU thread;
runs are spread over ``--workers`` processes. Prints a table, writes a JSON and a PNG.

    python examples/second_minimum.py                           # the full protocol
    python examples/second_minimum.py --aggrs lcm sum --seeds 0 --epochs 3   # a quick look

Network: Linear(8, C) -> GELU -> Linear(C, C) -> Tanh -> aggregator (C -> C) -> Linear(C, C) ->
GELU -> Linear(C, 8), BCE-with-logits per bit, Adam. Differences from PyG's example (which
reports ~95% after up to 1,000 epochs at lr 1e-4, batch 128, dropout 0.5): Adam with a
one-cycle schedule (peak lr 3e-3), no dropout, a tanh after the encoder, C = 64 by default,
40 epochs by default (about 6 CPU minutes per LCM run); graphseq's LCM can add
``--assoc-weight`` times its associativity loss.
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing as mp
import os
import platform
import sys
import time

import torch
from torch import nn
from torch_geometric.nn import aggr as pyg_aggr

from graphseq.datasets.sets import SetBatch, second_minimum
from graphseq.nn.aggr import LCMAggregation, RecurrentAggregation

AGGRS = ("sum", "max", "pyg_gru", "pyg_lcm", "lcm", "lcm_mlp", "recurrent_gru")


def make_aggr(name: str, c: int) -> nn.Module:
    if name == "sum":
        return pyg_aggr.SumAggregation()
    if name == "max":
        return pyg_aggr.MaxAggregation()
    if name == "pyg_gru":
        return pyg_aggr.GRUAggregation(c, c)
    if name == "pyg_lcm":
        return pyg_aggr.LCMAggregation(c, c, project=False)
    if name == "lcm":
        return LCMAggregation(c, c, project=False)
    if name == "lcm_mlp":
        return LCMAggregation(c, c, cell="mlp", project=False)
    if name == "recurrent_gru":
        return RecurrentAggregation(c, c, cell="gru")
    raise ValueError(f"unknown aggregator {name!r}; choose from {AGGRS}")


class SetNet(nn.Module):
    def __init__(self, aggr: nn.Module, bits: int, c: int) -> None:
        super().__init__()
        # tanh: leaves live in the same bounded range as the GRU-cell states they are merged with
        self.encoder = nn.Sequential(nn.Linear(bits, c), nn.GELU(), nn.Linear(c, c), nn.Tanh())
        self.aggr = aggr
        self.decoder = nn.Sequential(nn.Linear(c, c), nn.GELU(), nn.Linear(c, bits))

    def forward(self, bits: torch.Tensor, index: torch.Tensor, num_sets: int):
        h = self.encoder(bits)  # [E, C]
        return self.decoder(self.aggr(h, index, dim_size=num_sets)), h


def shuffle_within_sets(data: SetBatch, gen: torch.Generator) -> SetBatch:
    """A random order of the elements inside every set (the sets stay in place)."""
    index = data.index
    perm = torch.randperm(index.numel(), generator=gen)
    perm = perm[torch.sort(index[perm], stable=True)[1]]
    return SetBatch(data.values[perm], data.ptr, data.target, data.num_bits)


@torch.no_grad()
def accuracy(model: SetNet, data: SetBatch, batch: int = 1024) -> float:
    model.eval()
    hits = 0
    for start in range(0, len(data), batch):
        part = data.select(torch.arange(start, min(start + batch, len(data))))
        logits, _ = model(part.bits(), part.index, len(part))
        hits += int(((logits > 0).float() == part.target_bits()).all(1).sum())
    model.train()
    return hits / max(len(data), 1)


#: the settings that runs merged into one table must share (seeds and aggregators aside)
MERGE_KEYS = ("epochs", "budget", "train_sets", "test_sets", "batch", "channels", "lr",
              "assoc_weight", "assoc_operand_size")  # fmt: skip


def run(cfg: dict) -> dict:
    torch.set_num_threads(1)
    name, seed = cfg["aggr"], cfg["seed"]
    torch.manual_seed(seed)
    bits, c = 8, cfg["channels"]
    train = second_minimum(cfg["train_sets"], 2, 16, num_bits=bits, seed=1000 * seed + 1)
    tests = {
        n: second_minimum(cfg["test_sets"], n, n, num_bits=bits, seed=1000 * seed + 2 + n)
        for n in (32, 64)
    }
    model = SetNet(make_aggr(name, c), bits, c)
    opt = torch.optim.Adam(model.parameters(), lr=cfg["lr"])
    steps = cfg["epochs"] * -(-len(train) // cfg["batch"])
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=cfg["lr"], total_steps=steps, pct_start=0.1
    )  # warm-up over the first tenth of the steps, then cosine decay to ~0
    gen = torch.Generator().manual_seed(seed)
    assoc = cfg["assoc_weight"] if isinstance(model.aggr, LCMAggregation) else 0.0
    curve, cpu = [], 0.0
    for epoch in range(1, cfg["epochs"] + 1):
        t0 = time.process_time()
        data = shuffle_within_sets(train, gen)
        order = torch.randperm(len(data), generator=gen)
        total = 0.0
        for start in range(0, len(data), cfg["batch"]):
            part = data.select(order[start : start + cfg["batch"]])
            index = part.index
            logits, h = model(part.bits(), index, len(part))
            loss = nn.functional.binary_cross_entropy_with_logits(logits, part.target_bits())
            if assoc:
                loss = loss + assoc * model.aggr.associativity_loss(
                    h, index, num_samples=128, max_operand_size=cfg["assoc_operand_size"]
                )
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item() * len(part)
        cpu += time.process_time() - t0
        acc = {n: accuracy(model, d) for n, d in tests.items()}
        curve.append(
            {
                "epoch": epoch,
                "cpu_s": cpu,
                "loss": total / len(data),
                "acc32": acc[32],
                "acc64": acc[64],
            }
        )
        print(
            f"[{name} seed {seed}] epoch {epoch}: loss {total / len(data):.4f} "
            f"acc32 {acc[32]:.3f} acc64 {acc[64]:.3f} cpu {cpu:.0f}s",
            flush=True,
        )
        if cpu > cfg["budget"]:
            break
    return {"aggr": name, "seed": seed, "curve": curve}


def first_reaching(curve: list[dict], level: float):
    for row in curve:
        if row["acc32"] >= level:
            return row["epoch"], row["cpu_s"]
    return None, None


def summarise(results: list[dict], aggrs: list[str]) -> list[dict]:
    rows = []
    for name in aggrs:
        runs = [r for r in results if r["aggr"] == name]
        if not runs:
            continue
        final = [r["curve"][-1] for r in runs]
        best32 = [max(x["acc32"] for x in r["curve"]) for r in runs]
        reach = [first_reaching(r["curve"], 0.9) for r in runs]
        rows.append(
            {
                "aggr": name,
                "seeds": len(runs),
                "epochs": [f["epoch"] for f in final],
                "final_acc32": [f["acc32"] for f in final],
                "final_acc64": [f["acc64"] for f in final],
                "best_acc32": best32,
                "epochs_to_90": [e for e, _ in reach],
                "cpu_s_to_90": [None if s is None else round(s, 1) for _, s in reach],
                "cpu_s_per_epoch": sum(f["cpu_s"] / f["epoch"] for f in final) / len(final),
            }
        )
    return rows


def _mean(xs):
    return sum(xs) / len(xs)


def print_table(rows: list[dict]) -> None:
    print(
        "| aggregator | seeds | final acc@32 (mean; per seed) | final acc@64 (mean) "
        "| epochs to 90% @32 | CPU s to 90% @32 | CPU s / epoch |"
    )
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        per = ", ".join(f"{a:.3f}" for a in r["final_acc32"])
        ep = ", ".join("-" if e is None else str(e) for e in r["epochs_to_90"])
        cs = ", ".join("-" if s is None else f"{s:.0f}" for s in r["cpu_s_to_90"])
        print(
            f"| {r['aggr']} | {r['seeds']} | {_mean(r['final_acc32']):.3f} ({per}) | "
            f"{_mean(r['final_acc64']):.3f} | {ep} | {cs} | {r['cpu_s_per_epoch']:.1f} |"
        )


def plot(results: list[dict], aggrs: list[str], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for k, name in enumerate(aggrs):
        for r in (r for r in results if r["aggr"] == name):
            xs = [p["cpu_s"] for p in r["curve"]]
            for ax, key in zip(axes, ("acc32", "acc64")):
                label = name if r["seed"] == min(x["seed"] for x in results) else None
                ax.plot(
                    xs,
                    [p[key] for p in r["curve"]],
                    color=colors[k % len(colors)],
                    label=label,
                    marker=".",
                )
    for ax, n in zip(axes, (32, 64)):
        ax.set_xlabel("training CPU seconds (1 thread)")
        ax.set_ylabel(f"exact match, sets of size {n}")
        ax.axhline(0.95, color="grey", lw=0.5, ls="--")
        ax.set_ylim(0, 1)
    axes[0].legend(fontsize=8)
    fig.suptitle("Second minimum: train on sizes 2-16, test on 32 and 64")
    fig.tight_layout()
    tmp = path + ".tmp.png"
    fig.savefig(tmp, dpi=120)  # then renamed: a killed run leaves the previous PNG whole
    plt.close(fig)
    os.replace(tmp, path)


def _positive_int(text: str) -> int:
    """argparse type: an int >= 1 (a zero epoch count, batch or set count cannot run)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive int, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive int, got {value}")
    return value


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--aggrs", nargs="+", default=list(AGGRS), choices=AGGRS)
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--epochs", type=_positive_int, default=40)
    p.add_argument(
        "--budget",
        type=float,
        default=float("inf"),
        help="stop a run after the epoch that passes this many training CPU s",
    )
    p.add_argument("--train-sets", type=_positive_int, default=2**16)
    p.add_argument("--test-sets", type=_positive_int, default=2**10)
    p.add_argument("--batch", type=_positive_int, default=128)
    p.add_argument("--channels", type=_positive_int, default=64)
    p.add_argument("--lr", type=float, default=3e-3, help="peak learning rate")
    p.add_argument("--assoc-weight", type=float, default=0.0)
    p.add_argument(
        "--assoc-operand-size",
        type=_positive_int,
        default=4,
        help="operands of the associativity loss reduce up to this many elements",
    )
    p.add_argument("--workers", type=_positive_int, default=2)
    p.add_argument("--out", default="runs/second_minimum")
    p.add_argument(
        "--merge",
        nargs="+",
        metavar="JSON",
        help="train nothing: merge the runs of earlier result files, then tabulate and plot",
    )
    args = p.parse_args(argv)
    if len(set(args.seeds)) != len(args.seeds):
        p.error(f"--seeds must be distinct (a repeated seed is the same run), got {args.seeds}")
    if len(set(args.aggrs)) != len(args.aggrs):  # each seed's run would count twice, two rows
        p.error(f"--aggrs must be distinct (a repeated aggregator is the same run), got "
                f"{args.aggrs}")  # fmt: skip
    # Adam refused a bad --lr from inside a run (a worker), naming no flag; --lr 0 trained nothing
    if not (math.isfinite(args.lr) and args.lr > 0):
        p.error(f"--lr must be a finite number > 0, got {args.lr}")
    if args.merge:
        results, settings, first, origin = [], None, None, {}
        for path in args.merge:
            try:
                with open(path) as f:
                    data = json.load(f)
            except (OSError, ValueError) as err:
                p.error(f"--merge: cannot read {path} as a results JSON of this script: {err}")
            # runs of other settings are not averaged into one row
            own = {k: (data.get("args") or {}).get(k) for k in MERGE_KEYS}
            if settings is None:
                settings, first = own, path
            elif own != settings:
                diff = {k: (settings[k], own[k]) for k in MERGE_KEYS if own[k] != settings[k]}
                p.error(f"--merge: {path} was run with other settings than {first}: {diff}")
            for r in data["runs"]:  # one run counted twice would pass for two seeds
                key = (r["aggr"], r["seed"])
                if key in origin:
                    p.error(f"--merge: {r['aggr']} seed {r['seed']} is in both {origin[key]} "
                            f"and {path}; merge each run once")  # fmt: skip
                origin[key] = path
            results += data["runs"]
        aggrs = [a for a in AGGRS if any(r["aggr"] == a for r in results)]
        rows = summarise(results, aggrs)
        print_table(rows)
        seeds = sorted({r["seed"] for r in results})
        record = {**settings, "seeds": seeds, "aggrs": aggrs, "merged": args.merge}
        _write(args, rows, results, aggrs, record)
        return

    cfgs = [
        {
            "aggr": a,
            "seed": s,
            "epochs": args.epochs,
            "budget": args.budget,
            "train_sets": args.train_sets,
            "test_sets": args.test_sets,
            "batch": args.batch,
            "channels": args.channels,
            "lr": args.lr,
            "assoc_weight": args.assoc_weight,
            "assoc_operand_size": args.assoc_operand_size,
        }
        for s in args.seeds
        for a in args.aggrs
    ]
    print(
        f"# {platform.platform()} | {platform.processor() or platform.machine()} | "
        f"torch {torch.__version__} | {len(cfgs)} runs on {args.workers} processes"
    )
    if args.workers > 1:
        with mp.get_context("spawn").Pool(args.workers) as pool:
            results = pool.map(run, cfgs, chunksize=1)
    else:
        results = [run(c) for c in cfgs]
    rows = summarise(results, args.aggrs)
    print_table(rows)
    _write(args, rows, results, args.aggrs)


def _write(
    args, rows: list[dict], results: list[dict], aggrs: list[str], record: dict | None = None
) -> None:
    from graphseq.train.io import write_text

    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    payload = {
        "args": vars(args) if record is None else record,
        "machine": platform.platform(),
        "command": " ".join(sys.argv),
        "summary": rows,
        "runs": results,
    }
    write_text(args.out + ".json", json.dumps(payload, indent=1))  # atomically
    plot(results, aggrs, args.out + ".png")
    print(f"wrote {args.out}.json and {args.out}.png")


if __name__ == "__main__":
    main()
