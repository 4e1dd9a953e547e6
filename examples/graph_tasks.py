"""Tokenizer × backbone on the six algorithmic tasks of the GSM paper (Tables 1–2), and a check
of the paper's qualitative orderings.

Every cell is :class:`~graphseq.nn.gsm.GSM` with no local encoder (``local="none"``, so the
tokenization and the positional encoding are the only sources of structure), one block, the
given global encoder (``transformer`` / ``ssm`` / ``hybrid``) and tokenization, trained by
:func:`graphseq.train.fit`. The tokenizations are the paper's rows: ``none`` = nodes in storage
order *without* positional encoding ("w/o PE"); ``random`` = node tokens in random order
("Node"); ``hac_dfs``; ``khop`` (k = 2); ``hac_bfs``. Every row but ``none`` adds a 6-dimensional
Laplacian eigenvector PE (``lap_pe``, random sign flips while training). Graph pooling is the
mean (``--pool``), so a count must come from the sequence model, not the readout — the setting
of the paper's counting theorem. A GIN row (sum pooling, as in the GIN paper) is the MPNN anchor.
A GSM++ row (:class:`~graphseq.nn.gsm.GSMPlusPlus` as designed: one block with a GatedGCN local
layer, a top-2 mixture of HAC-DFS, HAC-BFS and k-hop tokens, its hierarchical PE, attention)
shows what the full model does on each task. Graph generators and task definitions:
:mod:`graphseq.datasets.graph_tasks`.

Runs are resumable (:func:`graphseq.train.fit` skips a finished cell), so a grid can be split
over processes by ``--tasks`` and the tables rebuilt by rerunning the whole command with the
same ``--out`` (a folder written with other settings, e.g. by a version before the PE, is
refused by ``fit``: use a fresh ``--out``).

Orderings checked (paper, Tables 1–2):

1. node degree: each subgraph tokenization (``khop``, ``hac_bfs``) ≫ node tokens (``none``,
   ``random``);
2. colour counting without PE: ``ssm`` ≫ ``transformer`` (tokenization ``none``);
3. connectivity: ``hac_dfs`` ≥ ``random`` node order, for ``ssm`` and ``hybrid``.

    python examples/graph_tasks.py --epochs 20        # the full grid, 3 seeds: 288 + 18 runs
    python examples/graph_tasks.py --epochs 20 --tasks node_degree cycle_check triangle_counting
    python examples/graph_tasks.py --epochs 20 --tasks connectivity colour_counting shortest_path
    python examples/graph_tasks.py --grid reduced --sizes 300 150 150 --epochs 10 --seeds 0 \\
        --hidden 32                                   # the cells the checks read, minutes

(The full grid took 80 min wall as the two ``--tasks`` halves, one process per core of a
2-core CPU, plus 15 min for the GSM++ rows; see BENCHMARKS.md.)
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch

import graphseq.models.gsm  # noqa: F401  (registers gsm)
from graphseq.datasets.graph_tasks import GRAPH_TASKS
from graphseq.train.benchmarks_gsm import LAP_PE_DIM, graph_tasks_task
from graphseq.train.io import machine_info, write_json
from graphseq.train.trainer import TrainConfig, fit

TOKENIZATIONS = ("none", "random", "hac_dfs", "khop", "hac_bfs")
BACKBONES = ("transformer", "ssm", "hybrid")
#: ``--grid reduced``: only the cells the three ordering checks read (and the GIN anchor)
REDUCED = {
    "node_degree": [("hybrid", t) for t in ("none", "random", "khop", "hac_bfs")],
    "colour_counting": [("transformer", "none"), ("ssm", "none")],
    "connectivity": [(b, t) for b in ("ssm", "hybrid") for t in ("random", "hac_dfs")],
}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tasks", nargs="+", default=list(GRAPH_TASKS), choices=GRAPH_TASKS)
    parser.add_argument(
        "--tokenizations", nargs="+", default=list(TOKENIZATIONS), choices=TOKENIZATIONS
    )
    parser.add_argument("--backbones", nargs="+", default=list(BACKBONES), choices=BACKBONES)
    parser.add_argument("--sizes", type=int, nargs=3, default=[1000, 500, 500])
    parser.add_argument("--epochs", type=int, default=50)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--no-gin", action="store_true", help="skip the GIN anchor")
    parser.add_argument("--no-gsmpp", action="store_true", help="skip the GSM++ row")
    parser.add_argument(
        "--gsmpp-hidden",
        type=int,
        default=32,
        help="GSM++ width (32: about the SSM cells' parameter count)",
    )
    parser.add_argument(
        "--grid",
        choices=["full", "reduced"],
        default="full",
        help="reduced: the cells of REDUCED only (overrides --tasks, --tokenizations and "
        "--backbones)",
    )
    parser.add_argument(
        "--pool",
        choices=["mean", "sum"],
        default="mean",
        help="graph pooling of the sequence models (GIN always sums)",
    )
    parser.add_argument("--out", default="runs/graph_tasks")
    args = parser.parse_args(argv)
    for flag in ("epochs", "hidden", "gsmpp_hidden"):
        if getattr(args, flag) < 1:
            parser.error(f"--{flag.replace('_', '-')} must be >= 1, got {getattr(args, flag)}")
    if len(set(args.seeds)) != len(args.seeds):
        parser.error(f"--seeds must be distinct (a repeated seed is one run), got {args.seeds}")
    if min(args.sizes) < 1:
        parser.error(f"--sizes must all be >= 1, got {args.sizes}")
    torch.set_num_threads(1)
    if args.grid == "reduced":
        # the reduced grid trains its own cells: the tables and the checks must show them all
        # (--backbones ssm used to hide the hybrid/transformer cells and drop their checks)
        args.tasks = list(REDUCED)
        args.backbones, args.tokenizations = list(BACKBONES), list(TOKENIZATIONS)
    cells: dict[str, dict[str, float]] = {}
    spread: dict[str, dict[str, float]] = {}
    params: dict[str, dict[str, int]] = {}
    higher: dict[str, bool] = {}
    for task_name in args.tasks:
        task = graph_tasks_task(task_name, tuple(args.sizes), seed=0)
        higher[task_name] = task.higher_is_better
        runs = [("gin", "gin", {"hidden": args.hidden, "layers": 2, "dropout": 0.0,
                                "pool": "sum"})]  # fmt: skip
        runs = [] if args.no_gin else runs
        if not args.no_gsmpp:  # GSM++ as designed: its own PE (HPE), a GatedGCN local layer
            runs.append(("gsm++", "gsm++", {"hidden": args.gsmpp_hidden, "layers": 1,
                                            "scan_layers": 2, "pool": args.pool}))  # fmt: skip
        grid = (
            REDUCED[task_name]
            if args.grid == "reduced"
            else [(bb, tok) for tok in args.tokenizations for bb in args.backbones]
        )
        for bb, tok in grid:
            pe = {} if tok == "none" else {"pe": "lap_pe", "pe_dim": LAP_PE_DIM,
                                            "pe_sign_flip": True}  # fmt: skip
            runs.append((f"{bb}/{tok}", "gsm", {
                "hidden": args.hidden, "layers": 1, "seq_layers": 2, "tokenization": tok,
                "local": "none", "global_": bb, "pool": args.pool, **pe,
            }))  # fmt: skip
        for label, model, model_args in runs:
            scores = []
            for seed in args.seeds:
                config = TrainConfig(
                    benchmark=task.name, model=model, model_args=model_args,
                    epochs=args.epochs, batch_size=32, lr=1e-3, seed=seed, device="cpu",
                    threads=1, progress=False,
                )  # fmt: skip
                folder = Path(args.out) / task_name / label.replace("/", "_") / f"seed{seed}"
                result = fit(task, config, folder)
                scores.append(result["best"]["test"])
            cells.setdefault(task_name, {})[label] = statistics.fmean(scores)
            spread.setdefault(task_name, {})[label] = (
                statistics.stdev(scores) if len(scores) > 1 else None  # one seed: no spread
            )
            params.setdefault(task_name, {})[label] = result["num_parameters"]
            print(f"{task_name:18s} {label:22s} test {task.metric} "
                  f"{_cell(cells[task_name][label], spread[task_name][label])} ({len(scores)} "
                  f"seeds, {result['num_parameters']:,} parameters)", flush=True)  # fmt: skip
    print()
    for task_name, row in cells.items():
        print(f"### {task_name} ({'higher' if higher[task_name] else 'lower'} is better)")
        print("| tokenization | " + " | ".join(args.backbones) + " |")
        print("|---|" + "---:|" * len(args.backbones))
        sd = spread[task_name]
        for tok in args.tokenizations:
            keys = [f"{bb}/{tok}" for bb in args.backbones]
            vals = ["-" if k not in row else _cell(row[k], sd[k]) for k in keys]
            print(f"| {tok} | " + " | ".join(vals) + " |")
        if "gin" in row:
            print(f"| GIN (MPNN anchor) | {_cell(row['gin'], sd['gin'])} |")
        if "gsm++" in row:
            print(f"| GSM++ (MoT of HAC-DFS, HAC-BFS, k-hop; HPE; GatedGCN local) | "
                  f"{_cell(row['gsm++'], sd['gsm++'])} |")  # fmt: skip
        print()
    checks = _orderings(cells, args.backbones)
    for line in checks:
        print(line)
    write_json(Path(args.out) / "summary.json", {  # atomically, with what produced it
        "cells": cells, "std": spread, "parameters": params, "checks": checks,
        "args": vars(args), "command": sys.argv if argv is None else ["graph_tasks.py", *argv],
        "machine": machine_info()})  # fmt: skip


def _cell(mean: float, std: float | None) -> str:
    return f"{mean:.3f}" if std is None else f"{mean:.3f} ± {std:.3f}"


def _orderings(cells: dict, backbones) -> list[str]:
    lines = []

    def get(task, bb, tok):
        return cells.get(task, {}).get(f"{bb}/{tok}")

    for bb in backbones:  # each subgraph tokenization on its own against the node tokens
        node = [get("node_degree", bb, t) for t in ("none", "random")]
        for tok in ("khop", "hac_bfs"):
            sub = get("node_degree", bb, tok)
            if sub is not None and None not in node:
                ok = sub > max(node) + 0.1
                lines.append(
                    f"[{'held' if ok else 'NOT held'}] node degree, {bb}: {tok} tokens "
                    f"{sub:.3f} vs node tokens {min(node):.3f}..{max(node):.3f}"
                )
    s, t = get("colour_counting", "ssm", "none"), get("colour_counting", "transformer", "none")
    if s is not None and t is not None:
        lines.append(f"[{'held' if s > t + 0.05 else 'NOT held'}] colour counting w/o PE: "
                     f"ssm {s:.3f} vs transformer {t:.3f}")  # fmt: skip
    for bb in ("ssm", "hybrid"):
        h, r = get("connectivity", bb, "hac_dfs"), get("connectivity", bb, "random")
        if h is not None and r is not None:
            lines.append(f"[{'held' if h >= r else 'NOT held'}] connectivity, {bb}: "
                         f"hac_dfs {h:.3f} vs random order {r:.3f}")  # fmt: skip
    return lines


if __name__ == "__main__":
    main()
