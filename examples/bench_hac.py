"""HAC tokenization time against graph size: is the Borůvka tree near-linear in practice?

Random graphs with ``n`` nodes and ``5 n`` undirected edges (average degree 10; endpoints drawn
uniformly, self-loops and duplicates left in for the tokenizer to drop) and 16 Gaussian features
per node. For each size the full :class:`~graphseq.nn.gsm.HACTokenizer` transform (affinities,
Borůvka rounds, DFS leaf order, paths, sibling ranks, sizes) is timed ``--repeats`` times in one
thread (``time.process_time``, CPU seconds); the median is reported with the tree depth, and the
scaling exponent is the least-squares slope of log(time) against log(n).

    python examples/bench_hac.py                       # 10^3, 10^4, 10^5 nodes
    python examples/bench_hac.py --sizes 1000 10000 100000 300000 --out runs/bench_hac.json
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np
import torch
from torch_geometric.data import Data

from graphseq.nn.gsm.tokenizers import HACTokenizer
from graphseq.train.io import machine_info, write_json


def random_graph(n: int, avg_degree: float, seed: int) -> Data:
    rng = np.random.default_rng(seed)
    m = round(n * avg_degree / 2)
    edge_index = torch.from_numpy(rng.integers(0, n, size=(2, m)))
    x = torch.from_numpy(rng.standard_normal((n, 16)).astype(np.float32))
    return Data(x=x, edge_index=edge_index, num_nodes=n)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1_000, 10_000, 100_000])
    parser.add_argument("--avg-degree", type=float, default=10.0)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--levels", type=int, default=32)
    parser.add_argument("--out", default=None, help="write the results as JSON here")
    args = parser.parse_args(argv)
    if min(args.sizes) < 1:
        parser.error(f"--sizes must all be >= 1, got {args.sizes}")
    if args.repeats < 1:
        parser.error(f"--repeats must be >= 1, got {args.repeats}")
    if not args.avg_degree >= 0 or args.avg_degree == float("inf"):
        parser.error(f"--avg-degree must be a finite number >= 0, got {args.avg_degree}")
    if args.levels < 1:
        parser.error(f"--levels must be >= 1, got {args.levels}")
    torch.set_num_threads(1)
    tokenizer = HACTokenizer(levels=args.levels)
    rows = []
    for n in args.sizes:
        data = random_graph(n, args.avg_degree, seed=n)
        times = []
        for _ in range(args.repeats):
            t0 = time.process_time()
            try:
                out = tokenizer(data)
            except ValueError as err:  # a tree deeper than --levels: name the flag
                parser.error(f"--levels {args.levels}: {err}")
            times.append(time.process_time() - t0)
        rows.append(
            {
                "nodes": n,
                "undirected_edges": int(data.edge_index.size(1)),
                "depth": int(out.hac_depth),
                "clusters": int(out.hac_num_clusters),
                "median_cpu_s": statistics.median(times),
                "min_cpu_s": min(times),
            }
        )
        print(
            f"n={n:>9,}  depth={rows[-1]['depth']:>2}  {rows[-1]['median_cpu_s']:.4f} s", flush=True
        )
    logn = np.log([r["nodes"] for r in rows])
    logt = np.log([r["median_cpu_s"] for r in rows])
    slope = float(np.polyfit(logn, logt, 1)[0]) if len(rows) > 1 else float("nan")
    print()
    print("| nodes | undirected edges | tree depth | clusters (all levels) | median CPU time (s) |")
    print("|---:|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['nodes']:,} | {r['undirected_edges']:,} | {r['depth']} | {r['clusters']:,} "
            f"| {r['median_cpu_s']:.4f} |"
        )
    print(f"\nfitted scaling exponent (time ~ n^k): k = {slope:.3f}")
    machine = f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, 1 thread"
    print(f"machine: {machine}; numpy {np.__version__}")
    if args.out:  # atomically, the folder created, with the command and versions
        write_json(
            args.out,
            {"command": sys.argv, "machine": machine, "versions": machine_info(),
             "rows": rows, "exponent": slope},
        )  # fmt: skip


if __name__ == "__main__":
    main()
