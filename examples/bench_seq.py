"""Speed of graphseq.nn.seq on this machine, against sequential and fused baselines.

* ParallelGRU (Newton on linear scans) forward+backward: the full cell against a
  torch.nn.GRUCell loop with autograd (same weights) and torch.nn.GRU (cuDNN on a GPU, the
  fused CPU kernel here); the diagonal cell (another model: a diagonal recurrent weight)
  against its own sequential mode only;
* Aaren against torch's scaled_dot_product_attention (causal, the learned query repeated).

Every timed pair is checked for equal outputs first; a case whose check fails is reported as
FAILED with no speed-up. Times are medians after one warm-up run: over ``--repeats`` runs for
the parallel layers, Aaren and SDPA, over ``--seq-repeats`` runs for the sequential baselines
(the GRUCell loop, ``torch.nn.GRU`` and the diagonal cell's sequential mode); every row records
its number of timed runs (``runs``).

    python examples/bench_seq.py                   # T = 4096, the default shapes
    python examples/bench_seq.py --T 1024 --repeats 5 --threads 1
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time

import torch
import torch.nn.functional as F

from graphseq.nn.seq import Aaren, ParallelGRU
from graphseq.train.io import write_json


def timeit(fn, repeats: int) -> float:
    """Median wall time of ``fn()`` in milliseconds, after one warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


def _fwd_bwd(forward, inputs):
    def run():
        for t in inputs:
            t.grad = None
        forward().sum().backward()

    return run


def gru_cell_loop(cell, x):
    h = x.new_zeros(x.shape[0], cell.hidden_size)
    out = []
    for x_t in x.unbind(1):
        h = cell(x_t, h)
        out.append(h)
    return torch.stack(out, 1)


def bench_gru(B: int, T: int, D: int, H: int, repeats: int, seq_repeats: int) -> list[dict]:
    torch.manual_seed(0)
    x = torch.randn(B, T, D, requires_grad=True)
    cell = torch.nn.GRUCell(D, H)
    full = ParallelGRU(D, H, recurrence="full")
    full.load_state_dict(cell.state_dict())
    diag = ParallelGRU(D, H, recurrence="diagonal")
    gru = torch.nn.GRU(D, H, batch_first=True)
    with torch.no_grad():  # the same weights, so that its output can be checked too
        for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
            getattr(gru, f"{name}_l0").copy_(getattr(cell, name))
    shape = f"B={B} T={T} D={D} H={H}"

    with torch.no_grad():
        ref = gru_cell_loop(cell, x)
        err_full = (full(x) - ref).abs().max().item()
        err_gru = (gru(x)[0] - ref).abs().max().item()
        err_diag = (diag(x) - diag(x, mode="sequential")).abs().max().item()
    rows = []
    t_loop = timeit(_fwd_bwd(lambda: gru_cell_loop(cell, x), [x]), seq_repeats)
    t_diag_seq = timeit(_fwd_bwd(lambda: diag(x, mode="sequential"), [x]), seq_repeats)
    t_gru = timeit(_fwd_bwd(lambda: gru(x)[0], [x]), seq_repeats)
    t_full = timeit(_fwd_bwd(lambda: full(x), [x]), repeats)
    it_full = full.last_num_iters
    t_diag = timeit(_fwd_bwd(lambda: diag(x), [x]), repeats)
    it_diag = diag.last_num_iters
    ok_full, ok_diag, ok_gru = err_full <= 1e-5, err_diag <= 1e-5, err_gru <= 1e-5
    rows.append(dict(case="GRUCell loop (autograd)", shape=shape, ms=t_loop, vs=None,
                     runs=seq_repeats))  # fmt: skip
    rows.append(dict(case="torch.nn.GRU (fused)", shape=shape, ms=t_gru, vs=None, runs=seq_repeats,
                     check=f"max|y - GRUCell loop| = {err_gru:.1e}" + ("" if ok_gru else
                                                                       " FAILED")))  # fmt: skip
    rows.append(
        dict(
            case="ParallelGRU diagonal, sequential mode",
            shape=shape,
            ms=t_diag_seq,
            vs=None,
            runs=seq_repeats,
        )
    )
    rows.append(
        dict(
            case=f"ParallelGRU full ({it_full} it)",
            shape=shape,
            ms=t_full,
            runs=repeats,
            vs=(
                None
                if not ok_full
                else {
                    "GRUCell loop": t_loop / t_full,
                    **({"nn.GRU": t_gru / t_full} if ok_gru else {}),
                }
            ),
            check=f"max|y - GRUCell loop| = {err_full:.1e}" + ("" if ok_full else " FAILED"),
        )
    )
    rows.append(
        dict(
            case=f"ParallelGRU diagonal ({it_diag} it)",
            shape=shape,
            ms=t_diag,
            runs=repeats,
            # the diagonal cell is another model than GRUCell / nn.GRU (a [3H] recurrent
            # weight, not [3H, H]): its one checked, same-work baseline is its own sequential
            # mode; the full-cell rows above give the cross-model times for reference
            vs={"own seq. mode": t_diag_seq / t_diag} if ok_diag else None,
            check=f"max|y - sequential| = {err_diag:.1e}" + ("" if ok_diag else " FAILED"),
        )
    )
    return rows


def bench_aaren(B: int, T: int, D: int, heads: int, repeats: int) -> list[dict]:
    torch.manual_seed(0)
    layer = Aaren(D, heads=heads)
    x = torch.randn(B, T, D, requires_grad=True)
    Dh = D // heads

    def sdpa():
        k = layer.key(x).view(B, T, heads, Dh).transpose(1, 2)
        v = layer.value(x).view(B, T, heads, Dh).transpose(1, 2)
        q = layer.query[None, :, None, :].expand(B, heads, T, Dh)
        o = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return layer.out_proj(o.transpose(1, 2).reshape(B, T, D))

    with torch.no_grad():
        err = (layer(x) - sdpa()).abs().max().item()
    ok = err <= 1e-5
    shape = f"B={B} T={T} D={D} heads={heads}"
    rows = []
    for kind in ("fwd", "fwd+bwd"):
        if kind == "fwd":
            with torch.no_grad():
                t_sdpa = timeit(sdpa, repeats)
                t_aaren = timeit(lambda: layer(x), repeats)
        else:
            t_sdpa = timeit(_fwd_bwd(sdpa, [x]), repeats)
            t_aaren = timeit(_fwd_bwd(lambda: layer(x), [x]), repeats)
        rows.append(dict(case=f"SDPA causal {kind}", shape=shape, ms=t_sdpa, vs=None, runs=repeats))
        rows.append(
            dict(
                case=f"Aaren {kind}",
                shape=shape,
                ms=t_aaren,
                runs=repeats,
                vs={"SDPA": t_sdpa / t_aaren} if ok else None,
                check=f"max|y - SDPA| = {err:.1e}" + ("" if ok else " FAILED"),
            )
        )
    return rows


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--T", type=int, default=4096)
    p.add_argument(
        "--gru-shapes",
        nargs="+",
        default=["1,64,128", "4,64,64"],
        help="B,D,H triples for the GRU comparison",
    )
    p.add_argument("--aaren-shapes", nargs="+", default=["4,64,4"], help="B,D,heads triples")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--seq-repeats", type=int, default=2, help="repeats of the slow loops")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--out", default="runs/bench_seq.json")
    args = p.parse_args(argv)
    for flag in ("T", "repeats", "seq_repeats"):
        if getattr(args, flag) < 1:
            p.error(f"--{flag.replace('_', '-')} must be >= 1, got {getattr(args, flag)}")
    if args.threads is not None and args.threads < 1:
        p.error(f"--threads must be >= 1, got {args.threads}")

    def triples(flag, specs, names):  # checked before anything is timed
        out = []
        for spec in specs:
            try:
                values = tuple(int(v) for v in spec.split(","))
            except ValueError:
                values = ()
            if len(values) != 3 or min(values) < 1:
                p.error(f"--{flag}: expected {names} as three positive ints, got {spec!r}")
            out.append(values)
        return out

    gru_shapes = triples("gru-shapes", args.gru_shapes, "B,D,H")
    aaren_shapes = triples("aaren-shapes", args.aaren_shapes, "B,D,heads")
    for spec, (_, D, heads) in zip(args.aaren_shapes, aaren_shapes):
        if D % heads:
            p.error(f"--aaren-shapes: heads must divide D, got {spec!r}")
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    print("command: python", " ".join(sys.argv))
    machine = (
        f"torch {torch.__version__}, {platform.machine()} CPU, {os.cpu_count()} cores, "
        f"{torch.get_num_threads()} torch threads"
    )
    print(machine)
    rows: list[dict] = []
    for B, D, H in gru_shapes:
        rows += bench_gru(B, args.T, D, H, args.repeats, args.seq_repeats)
    for B, D, heads in aaren_shapes:
        rows += bench_aaren(B, args.T, D, heads, args.repeats)

    print(f"\n{'case':<40} {'shape':<24} {'ms':>10} {'runs':>4}  speed-up of this row over")
    for r in rows:
        vs = ", ".join(f"{k} {v:.1f}x" for k, v in (r["vs"] or {}).items())
        print(f"{r['case']:<40} {r['shape']:<24} {r['ms']:>10.1f} {r['runs']:>4}  {vs}")
        if r.get("check"):
            print(f"{'':<40} {'':<24} {'':>10} {'':>4}  ({r['check']})")
    write_json(args.out, {"command": sys.argv, "machine": machine, "rows": rows})  # atomically
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
