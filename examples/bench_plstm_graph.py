"""PLSTMGraph speed per molecule against per-edge Python loops (the released code's scheme).

Molecules are the first ``--molecules`` SMILES of a MoleculeNet CSV (default ``hiv.csv``; graphs
by ``ogb.utils.smiles2graph``, both bond directions). One layer, ``D = --dim`` channels,
``--heads`` heads, bond features embedded to ``D`` (the paper's pLSTMGraphEdgeLayer setting:
D = 96, 4 heads). Every time is forward + backward of one layer (sum of the output as loss),
median of ``--repeats`` rounds after a warm-up round, divided by the number of molecules; each
round runs every variant below once, in turn (so a change of the machine's speed during the
run touches all of them alike):

* ``graphseq, batched``: :class:`~graphseq.nn.plstm.graph.PLSTMGraph` on the whole PyG batch;
* ``graphseq, one molecule at a time``: the same layer on batches of one molecule;
* ``per-edge loop (graphseq reference)``: the same layer's gates, then
  :func:`~graphseq.nn.plstm.graph.plstm_graph_reference`, a Python loop over the edges in
  topological order (float64: it is the test ground truth), autograd through the loop;
* ``released pLSTMGraphEdgeLayer``: with ``--plstm-src PATH`` (a checkout of ml-jku/plstm's
  ``src`` folder, its dependencies networkx, compoconf and einops importable, e.g. through
  ``PYTHONPATH``), the released layer in float32 on each molecule, its networkx
  ``PreparedGraph`` built beforehand (its build time is reported separately).

With ``--batch-sizes B1 B2 ...`` the batched layer is also timed on the first ``B`` molecules
for each ``B`` (its own PyG batch and preprocessing, each timed warm as above), and a table
prints the per-molecule time for each batch size next to the released loop's per-molecule
time from the main measurement and their ratio. Where ``B`` differs from ``--molecules`` the
two sides of that ratio ran different molecules and at different times: the main
measurement's speed-up is the fair one.

On CPU the batched layer's path form runs by the compiled kernel of
:func:`graphseq.kernels.dag_attention.dag_attention` when it can be built (the script says
which); ``--no-native`` times the bucketed PyTorch path form instead (the GPU path, and the
CPU one without a C compiler). Its graph plan (:meth:`DagStructure.native_layout`) is part of
the timed preprocessing. For the bucketed form, the per-head index plan (integer bookkeeping,
about a twentieth of the batched time on HIV molecules) is built on the layer's first call and
cached on the layout, like the layout itself for a model that keeps its structures; it is in
neither timing. The batched layer is timed warm (an untimed call right before each timed one),
the loops are not (each warms up on its own first molecules).

Graph preprocessing (graphseq: orientation, line graph, pruning, levels, vectorised;
released: networkx) depends on the graph only and is timed separately for both (a model
shares it between its layers); speed-ups are given without and with it. Both loops run on the
same molecules as the batched layer (or on the first ``--loop-molecules`` of them, which makes
the per-molecule times of different molecule sets: the script says so). The speed-up is loop
time / graphseq batched time per molecule, measured in the same process.

    python examples/bench_plstm_graph.py --molecules 64 --threads 1
    python examples/bench_plstm_graph.py --batch-sizes 64 256 1024 --loop-molecules 16
    PYTHONPATH=DEPS python examples/bench_plstm_graph.py --plstm-src PLSTM_SRC/src

(``PLSTM_SRC``: a checkout of ml-jku/plstm; ``DEPS``: a ``pip install --target`` folder with
networkx, compoconf and einops.)
"""

from __future__ import annotations

import argparse
import csv
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

import graphseq.nn.plstm.graph as graph_module
from graphseq.kernels.dag_attention import native_available
from graphseq.nn.plstm.graph import PLSTMGraph, plstm_graph_reference
from graphseq.train.io import machine_info, write_json


def interleaved(fns: dict, repeats: int, warm: tuple = ()) -> dict:
    """Median wall time in seconds of each of ``fns`` (name -> callable), after one warm-up
    round: every round runs each function once, in turn, so that a change in the machine's
    speed during the run (other processes, clock) reaches all of them alike and their ratios
    stay comparable. The functions named in ``warm`` are called once more, untimed, right
    before their timed call in every round: a single call of a layer on a batch would
    otherwise be timed cold (caches and allocator just churned by the seconds-long loops
    before it), unlike a training loop's back-to-back steps; a loop over molecules warms up
    on its own first molecules."""
    for fn in fns.values():
        fn()
    times: dict = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            if name in warm:
                fn()
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def load_molecules(data_dir: Path, csv_name: str, count: int):
    """The first ``count`` parsable SMILES of ``csv_name`` as PyG ``Data`` (OGB features)."""
    from ogb.utils import smiles2graph
    from rdkit import RDLogger
    from torch_geometric.data import Data

    RDLogger.DisableLog("rdApp.*")
    path = data_dir / "moleculenet" / csv_name
    if not path.exists():
        sys.exit(f"bench_plstm_graph: {path} not found; pass --data-dir (see ../shared/data)")
    graphs = []
    with open(path) as f:
        for row in csv.DictReader(f):
            smiles = row.get("smiles") or row.get("SMILES") or next(iter(row.values()))
            try:
                g = smiles2graph(smiles)
            except Exception:  # unparsable SMILES: skip, as the dataset builders do
                continue
            if g["num_nodes"] < 2 or g["edge_index"].shape[1] == 0:
                continue
            graphs.append(
                Data(
                    x=torch.from_numpy(g["node_feat"]).long(),
                    edge_index=torch.from_numpy(g["edge_index"]).long(),
                    edge_attr=torch.from_numpy(g["edge_feat"]).long(),
                    num_nodes=int(g["num_nodes"]),
                )
            )
            if len(graphs) == count:
                break
    return graphs


def native_in_use() -> bool:
    """Whether PLSTMGraph's path form runs by the compiled kernel here (CPU tensors)."""
    return graph_module.NATIVE_PATHS and native_available()


def prepare_with_layout(conv: PLSTMGraph, batch):
    """``conv``'s preprocessing of a PyG batch, including the graph layout its algorithm
    uses (otherwise built lazily on the first forward, outside the timed preprocessing)."""
    structure = conv.prepare(batch.edge_index, batch.num_nodes, batch.batch)
    if conv.algorithm != "states":
        if native_in_use():
            structure.native_layout(conv.algorithm)
        else:
            structure.layout(conv.algorithm)
    return structure


def bench_mode(mode: str, args, graphs, batch, released) -> dict:
    """Time one layer mode; returns per-molecule milliseconds and speed-ups."""
    loop_graphs = graphs[: args.loop_molecules]
    conv = PLSTMGraph(args.dim, args.dim, args.heads, mode, edge_dim=args.dim)
    x = batch.h.clone().requires_grad_()

    # graph preprocessing is timed on its own, for graphseq as for the released code: it
    # depends on the graph only, so a model shares it between layers (or caches it)
    def prepare_batch():
        return prepare_with_layout(conv, batch)

    structure = prepare_batch()
    singles = [conv.prepare(g.edge_index, g.num_nodes) for g in graphs]

    def run_batched():
        out = conv(x, batch.edge_index, batch.batch, edge_attr=batch.e, structure=structure)
        out.sum().backward()

    def run_single():
        for g, st in zip(graphs, singles):
            h = g.h.clone().requires_grad_()
            conv(h, g.edge_index, edge_attr=g.e, structure=st).sum().backward()

    def run_loop():
        for g, st in zip(loop_graphs, singles):
            h = g.h.clone().requires_grad_()
            gates = conv.gates(h, st, g.e)
            out = plstm_graph_reference(*gates, st.edge_index, st.lg_edge_index)
            out.sum().backward()

    fns = {"prep": prepare_batch, "batch": run_batched, "single": run_single, "loop": run_loop}
    if released is not None:
        nx, PreparedGraph, Layer, Config = released
        cfg = Config(mode=mode, input_dim=args.dim, num_heads=args.heads,
                     edge_input_dim=args.dim, dtype="float32", max_edges=1)  # fmt: skip
        layer = Layer(cfg)
        layer.reset_parameters()
        nx_graphs = []
        t0 = time.perf_counter()
        for g in loop_graphs:
            G = nx.Graph()
            G.add_nodes_from(range(g.num_nodes))
            G.add_edges_from(g.edge_index.t().tolist())
            nx_graphs.append(PreparedGraph.create(G, mode=mode))
        t_rel_prep = (time.perf_counter() - t0) / len(loop_graphs)

        def run_released():
            for g, pg in zip(loop_graphs, nx_graphs):
                h = g.h.clone().requires_grad_()
                # one feature row per bond (OGB stores a bond as two consecutive directed
                # edges), not matched to networkx's edge order: for timing only
                e = g.e[::2]
                layer(h, e, pg).sum().backward()

        fns["released"] = run_released
    # all timed in turn, round after round (see interleaved)
    t = interleaved(fns, args.repeats, warm=("prep", "batch"))
    t_prep, t_batch, t_single = (t[k] / len(graphs) for k in ("prep", "batch", "single"))
    t_loop = t["loop"] / len(loop_graphs)
    row = {"graphseq_batched_ms": 1e3 * t_batch, "graphseq_prepare_ms": 1e3 * t_prep,
           "graphseq_single_ms": 1e3 * t_single, "loop_reference_ms": 1e3 * t_loop,
           "speedup_vs_loop": t_loop / t_batch,
           "speedup_vs_loop_with_prepare": t_loop / (t_batch + t_prep)}  # fmt: skip
    if released is not None:
        t_rel = t["released"] / len(loop_graphs)
        row.update({"released_ms": 1e3 * t_rel, "released_prepare_ms": 1e3 * t_rel_prep,
                    "speedup_vs_released": t_rel / t_batch,
                    "speedup_vs_released_with_prepare":
                        (t_rel + t_rel_prep) / (t_batch + t_prep)})  # fmt: skip
    print(f"\nmode {mode}: forward+backward of one layer, per molecule")
    print(f"  graphseq, batched ({len(graphs)} molecules)      {1e3 * t_batch:9.3f} ms"
          f"   (+ {1e3 * t_prep:.2f} ms preprocessing)")  # fmt: skip
    print(f"  graphseq, one molecule at a time          {1e3 * t_single:9.3f} ms")
    print(f"  per-edge loop (graphseq reference)        {1e3 * t_loop:9.3f} ms"
          f"   -> batched is {t_loop / t_batch:,.0f}x faster")  # fmt: skip
    if released is not None:
        print(f"  released pLSTMGraphEdgeLayer (loop)       {row['released_ms']:9.3f} ms"
              f"   -> batched is {row['speedup_vs_released']:,.0f}x faster"
              f" (+ {row['released_prepare_ms']:.1f} ms networkx preprocessing; with preprocessing "
              f"on both sides {row['speedup_vs_released_with_prepare']:,.0f}x)")  # fmt: skip
    return row


def bench_batch_size(mode: str, args, graphs) -> dict:
    """Per-molecule forward+backward (and preprocessing) time of the batched layer on ``graphs``
    as one PyG batch."""
    from torch_geometric.data import Batch

    torch.manual_seed(0)
    conv = PLSTMGraph(args.dim, args.dim, args.heads, mode, edge_dim=args.dim)
    batch = Batch.from_data_list(graphs)
    x = batch.h.clone().requires_grad_()

    def prepare_batch():
        return prepare_with_layout(conv, batch)

    structure = prepare_batch()

    def run_batched():
        out = conv(x, batch.edge_index, batch.batch, edge_attr=batch.e, structure=structure)
        out.sum().backward()

    nodes = [g.num_nodes for g in graphs]
    return {
        "molecules": len(graphs),
        "atoms": [min(nodes), max(nodes)],
        **{
            f"{name}_ms": 1e3 * t / len(graphs)
            for name, t in interleaved(
                {"batched": run_batched, "prepare": prepare_batch},
                args.repeats,
                warm=("batched", "prepare"),
            ).items()
        },
    }


def print_batch_size_table(results: dict) -> None:
    """One row per batch size: graphseq batched per molecule, and the loops' per molecule."""
    modes = list(results["modes"])
    print("\nforward+backward of one layer, ms per molecule, by batch size")
    head = f"{'batch':>6s} {'atoms':>7s}"
    for m in modes:
        head += f" {'graphseq ' + m:>11s} {'(+prep)':>8s}"
    for m in modes:
        if "released_ms" in results["modes"][m]:
            head += f" {'released ' + m:>11s} {'speed-up':>9s}"
    print(head)
    first = results["modes"][modes[0]]["batch_sizes"]
    for i, row0 in enumerate(first):
        line = f"{row0['molecules']:>6d} {row0['atoms'][0]:>3d}-{row0['atoms'][1]:<3d}"
        for m in modes:
            row = results["modes"][m]["batch_sizes"][i]
            line += f" {row['batched_ms']:>11.3f} {row['prepare_ms']:>8.3f}"
        for m in modes:
            mode_row = results["modes"][m]
            if "released_ms" in mode_row:
                released = mode_row["released_ms"]
                speedup = released / mode_row["batch_sizes"][i]["batched_ms"]
                line += f" {released:>11.2f} {speedup:>8.0f}x"
        print(line)
    if any("released_ms" in results["modes"][m] for m in modes):
        n = results["loop_molecules"]
        print(f"(released: per-molecule time of its per-edge loop on the first {n} molecules; "
              "speed-up = released / graphseq batched)")  # fmt: skip


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--molecules", type=int, default=64)
    p.add_argument("--csv", default="hiv.csv", help="MoleculeNet CSV under <data-dir>/moleculenet")
    p.add_argument("--data-dir", default=None, help="default: $GRAPHSEQ_DATA or ../shared/data")
    p.add_argument("--dim", type=int, default=96)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--modes", default="PD", help="layer modes to time (P, D or PD)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--loop-molecules", type=int, default=None,
                   help="time the slow per-edge loops on the first ones only (default: all "
                        "--molecules, so that both sides run the same molecules)")  # fmt: skip
    p.add_argument("--threads", type=int, default=1)
    p.add_argument(
        "--no-native",
        action="store_true",
        help="run the bucketed PyTorch path form, not the compiled CPU kernel",
    )
    p.add_argument("--plstm-src", default=None, help="path of ml-jku/plstm's src folder")
    p.add_argument("--batch-sizes", type=int, nargs="+", default=None, metavar="B",
                   help="also time the batched layer on the first B molecules, each B")  # fmt: skip
    p.add_argument("--out", default=None, help="write the results as JSON here")
    args = p.parse_args(argv)
    if args.loop_molecules is None:
        args.loop_molecules = args.molecules
    for name in ("molecules", "repeats", "loop_molecules", "threads", "dim", "heads"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1")
    if args.batch_sizes and min(args.batch_sizes) < 1:
        p.error("--batch-sizes must be >= 1")
    if args.dim % args.heads:
        p.error("--heads must divide --dim")
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    if args.no_native:
        graph_module.NATIVE_PATHS = False
    repo = Path(__file__).resolve().parents[1]
    data_dir = Path(
        args.data_dir or os.environ.get("GRAPHSEQ_DATA") or repo.parent / "shared" / "data"
    )
    from torch_geometric.data import Batch

    from graphseq.models.gin import AtomEncoder, BondEncoder

    wanted = max([args.molecules, *(args.batch_sizes or [])])
    every = load_molecules(data_dir, args.csv, wanted)
    if args.batch_sizes and len(every) < max(args.batch_sizes):
        sys.exit(f"bench_plstm_graph: {args.csv} has only {len(every)} usable molecules")
    graphs = every[: args.molecules]
    atom, bond = AtomEncoder(args.dim), BondEncoder(args.dim)
    with torch.no_grad():
        for g in every:
            g.h = atom(g.x)  # [N, D] float features
            g.e = bond(g.edge_attr)  # [E, D]
    batch = Batch.from_data_list(graphs)
    nodes = [g.num_nodes for g in graphs]
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"torch {torch.__version__}, threads {args.threads}")  # fmt: skip
    print(f"{len(graphs)} molecules from {args.csv}: {min(nodes)}-{max(nodes)} atoms, "
          f"mean {sum(nodes) / len(nodes):.1f}; D={args.dim}, heads={args.heads}")  # fmt: skip
    path_form = ("compiled CPU kernel (graphseq.kernels.dag_attention)" if native_in_use()
                 else "bucketed PyTorch blocks")  # fmt: skip
    print(f"graphseq path form: {path_form}")
    if args.loop_molecules < len(graphs):
        few = nodes[: args.loop_molecules]
        print(f"loops on the first {len(few)} only (mean {sum(few) / len(few):.1f} atoms): "
              "their per-molecule time is of other molecules than the batched one's")  # fmt: skip

    released = None
    if args.plstm_src:
        sys.path.insert(0, args.plstm_src)
        import networkx as nx
        from plstm.config.plstm_graph_layer import pLSTMGraphEdgeLayerConfig
        from plstm.graph import PreparedGraph
        from plstm.torch.plstm_graph_layer import pLSTMGraphEdgeLayer

        released = (nx, PreparedGraph, pLSTMGraphEdgeLayer, pLSTMGraphEdgeLayerConfig)

    results = {"molecules": len(graphs), "loop_molecules": min(args.loop_molecules, len(graphs)),
               "dim": args.dim, "heads": args.heads, "threads": args.threads, "csv": args.csv,
               "native": native_in_use(),
               "machine": platform.processor() or platform.machine(), "modes": {}}  # fmt: skip
    for mode in args.modes:
        results["modes"][mode] = bench_mode(mode, args, graphs, batch, released)
        if args.batch_sizes:
            results["modes"][mode]["batch_sizes"] = [
                bench_batch_size(mode, args, every[:size]) for size in args.batch_sizes
            ]
    if args.batch_sizes:
        print_batch_size_table(results)
    if args.out:  # atomically, with the command and the machine
        write_json(args.out, {"command": sys.argv, "machine": machine_info(), "results": results})
        print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
