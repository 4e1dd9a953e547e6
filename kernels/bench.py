"""Kernel benchmark: every fast path against its reference loop.

Run as ``python -m graphseq.kernels.bench``.

Prints the machine, then one table row per (op, shape, mode) with the fast path's time, the
reference loop's time and their ratio; ``linear_scan`` also gets ``torch.cumsum`` over the same
tensor (the floor for a first-order scan on this machine). Forward and forward+backward are
timed separately. Before any timing each op's fast path is checked against its reference on
a small input, and an op that fails the check is reported as failed, not timed.

Times are the minimum over ``--repeats`` runs after one warm-up (on a shared CPU the minimum is
the most repeatable estimate); on CUDA every run is bracketed by ``torch.cuda.synchronize``.
Results go to ``--out`` as JSON (default ``bench_results/kernels.json``).

Options: ``--quick`` shrinks every shape (a smoke run), ``--ops`` selects ops,
``--backend`` picks the fast path (default: the device default).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import torch

from graphseq.kernels import (
    DagScanPlan,
    chunked_matrix_scan,
    dag_scan,
    grid_scan_2d,
    linear_scan,
    segment_scan,
    segment_tree_reduce,
)

OPS = (
    "linear_scan",
    "chunked_matrix_scan",
    "segment_tree_reduce",
    "segment_scan",
    "dag_scan",
    "grid_scan_2d",
)


@dataclass
class Row:
    op: str
    case: str
    mode: str  # "fwd" or "fwd+bwd"
    fast_ms: float
    reference_ms: float | None = None
    speedup_vs_reference: float | None = None
    baseline: str | None = None
    baseline_ms: float | None = None
    ratio_to_baseline: float | None = None  # fast time / baseline time (lower is better)
    extra: dict = field(default_factory=dict)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _time(fn: Callable[[], object], device: torch.device, repeats: int) -> float:
    """Minimum wall time of ``fn`` in milliseconds over ``repeats`` runs after one warm-up.

    Fast paths and reference loops are timed the same way (warm-up, then the minimum), the
    references over ``--ref-repeats`` runs: a cold single run of a reference overstated the
    speed-ups of small cases by up to 1.6x.
    """
    fn()
    _sync(device)
    best = float("inf")
    for _ in range(repeats):
        _sync(device)
        t0 = time.perf_counter()
        fn()
        _sync(device)
        best = min(best, time.perf_counter() - t0)
    return best * 1e3


def _fwd_bwd(fn: Callable[..., object], *inputs: torch.Tensor) -> Callable[[], None]:
    """A closure that runs ``fn`` and back-propagates a sum of all its outputs."""

    def run() -> None:
        out = fn(*inputs)
        outs = out if isinstance(out, tuple) else (out,)
        loss = sum(o.float().sum() for o in outs if o.requires_grad)
        loss.backward()

    return run


def _grad_inputs(*xs: torch.Tensor) -> list[torch.Tensor]:
    return [x.detach().clone().requires_grad_() for x in xs]


def machine() -> dict:
    info = {
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }
    try:
        import triton

        info["triton"] = triton.__version__
    except ImportError:
        info["triton"] = None
    return info


# --------------------------------------------------------------------------------------------
# correctness gate


def _gate(op: str, backend: str | None, device: torch.device) -> str | None:
    """Fast path vs reference on a small float64 input; returns an error message or None."""
    g = torch.Generator(device="cpu").manual_seed(0)

    def rnd(*shape):
        return torch.randn(*shape, generator=g, dtype=torch.float64).to(device)

    try:
        if op == "linear_scan":
            a, b = rnd(2, 77, 5).tanh(), rnd(2, 77, 5)
            got, want = (
                linear_scan(a, b, backend=backend)[0],
                linear_scan(a, b, backend="reference")[0],
            )
        elif op == "chunked_matrix_scan":
            q, k, v = rnd(1, 70, 2, 8), rnd(1, 70, 2, 8), rnd(1, 70, 2, 4)
            log_f = -rnd(1, 70, 2).abs() * 0.1
            got = chunked_matrix_scan(q, k, v, log_f, chunk_size=16, backend=backend)[0]
            want = chunked_matrix_scan(q, k, v, log_f, backend="reference")[0]
        elif op == "grid_scan_2d":
            q, k, v = rnd(2, 3, 5, 2, 3), rnd(2, 3, 5, 2, 3), rnd(2, 3, 5, 2, 4)
            gates = [rnd(2, 3, 5, 2).tanh() for _ in range(8)]
            got = grid_scan_2d(q, k, v, *gates, backend=backend)[0]
            want = grid_scan_2d(q, k, v, *gates, backend="reference")[0]
        elif op == "dag_scan":
            ei = torch.tensor([[0, 0, 1, 2, 4, 3], [1, 2, 3, 3, 5, 5]], device=device)
            x, w = rnd(6, 2, 3, 3), rnd(6, 2)
            got, want = dag_scan(x, w, ei, backend=backend), dag_scan(x, w, ei, backend="reference")
        else:
            x = rnd(40, 6)
            ptr = torch.tensor([0, 3, 3, 20, 40], device=device)
            fn = segment_tree_reduce if op == "segment_tree_reduce" else segment_scan
            got, want = fn(x, ptr, "sum", backend=backend), fn(x, ptr, "sum", backend="reference")
    except Exception as err:  # report, don't crash the whole benchmark
        return f"{type(err).__name__}: {err}"
    if not torch.allclose(got, want, atol=1e-9, rtol=1e-9):
        return f"fast path differs from reference by {(got - want).abs().max().item():.3e}"
    return None


# --------------------------------------------------------------------------------------------
# cases


def _linear_scan_rows(quick: bool, backend, device, repeats, ref_repeats: int = 3) -> list[Row]:
    shapes = {
        # (B, T, D): narrow and long, where the loop is overhead-bound
        "narrow B1 T65536 D64": (1, 65536, 64),
        # wide and memory-bound, where the loop is close to cumsum
        "wide B2 T4096 D1024": (2, 4096, 1024),
        "wide B16 T4096 D128": (16, 4096, 128),
    }
    if quick:
        shapes = {"quick B1 T4096 D16": (1, 4096, 16), "quick B2 T256 D256": (2, 256, 256)}
    rows = []
    for name, (B, T, D) in shapes.items():
        a = (torch.rand(B, T, D, device=device) * 0.1 + 0.9) * torch.where(
            torch.rand(B, T, D, device=device) < 0.3, -1.0, 1.0
        )
        b = torch.randn(B, T, D, device=device)
        fast = _time(lambda a=a, b=b: linear_scan(a, b, backend=backend), device, repeats)
        ref = _time(lambda a=a, b=b: linear_scan(a, b, backend="reference"), device, ref_repeats)
        cums = _time(lambda b=b: torch.cumsum(b, 1), device, repeats)
        rows.append(
            Row(
                "linear_scan", name, "fwd", fast, ref, ref / fast, "torch.cumsum", cums, fast / cums
            )
        )
        ga, gb = _grad_inputs(a, b)
        fast = _time(
            _fwd_bwd(lambda x, y: linear_scan(x, y, backend=backend), ga, gb), device, repeats
        )
        ref = _time(
            _fwd_bwd(lambda x, y: linear_scan(x, y, backend="reference"), ga, gb),
            device,
            ref_repeats,
        )
        (gc,) = _grad_inputs(b)
        cums = _time(_fwd_bwd(lambda x: torch.cumsum(x, 1), gc), device, repeats)
        rows.append(
            Row(
                "linear_scan",
                name,
                "fwd+bwd",
                fast,
                ref,
                ref / fast,
                "torch.cumsum",
                cums,
                fast / cums,
            )
        )
    return rows


def _bandwidth_rows(backend, device, repeats) -> list[Row]:
    """GPU only: linear_scan at B=16, T=16384, D=1024 as a fraction of 3.0 TB/s (H100 copy rate)."""
    B, T, D = 16, 16384, 1024
    a = torch.rand(B, T, D, device=device) * 0.1 + 0.9
    b = torch.randn(B, T, D, device=device)
    n = a.numel()
    fast = _time(lambda: linear_scan(a, b, backend=backend), device, repeats)
    copy = _time(lambda: b.clone(), device, repeats)
    gbps = 12 * n / (fast * 1e-3) / 1e9  # read a, b; write h (float32)
    copy_gbps = 8 * n / (copy * 1e-3) / 1e9
    return [
        Row(
            "linear_scan",
            f"B{B} T{T} D{D} fp32",
            "fwd",
            fast,
            baseline="tensor.clone",
            baseline_ms=copy,
            ratio_to_baseline=fast / copy,
            extra={
                "achieved_GBps": gbps,
                "fraction_of_3.0TBps": gbps / 3000,
                "clone_GBps": copy_gbps,
            },
        )
    ]


def _chunked_rows(quick: bool, backend, device, repeats, ref_repeats: int = 3) -> list[Row]:
    B, T, H, K = (1, 256, 2, 16) if quick else (2, 2048, 4, 32)
    q, k, v = (torch.randn(B, T, H, K, device=device) / K**0.5 for _ in range(3))
    log_f = torch.nn.functional.logsigmoid(torch.randn(B, T, H, device=device) + 3)
    i = torch.rand(B, T, H, device=device)
    name = f"B{B} T{T} H{H} K=V={K}"

    def fast_fn(*xs):
        return chunked_matrix_scan(*xs, backend=backend)

    def ref_fn(*xs):
        return chunked_matrix_scan(*xs, backend="reference")

    ins = (q, k, v, log_f, i)
    fast = _time(lambda: fast_fn(*ins), device, repeats)
    ref = _time(lambda: ref_fn(*ins), device, ref_repeats)
    rows = [Row("chunked_matrix_scan", name, "fwd", fast, ref, ref / fast)]
    g = _grad_inputs(*ins)
    fast = _time(_fwd_bwd(fast_fn, *g), device, repeats)
    ref = _time(_fwd_bwd(ref_fn, *g), device, ref_repeats)
    rows.append(Row("chunked_matrix_scan", name, "fwd+bwd", fast, ref, ref / fast))
    return rows


def _random_dags(graphs: int, n: int, gen: torch.Generator) -> torch.Tensor:
    """``edge_index`` of ``graphs`` disjoint random DAGs on ``n`` states each (about 1.5 edges
    per state, from lower to higher rank of a random order: molecule-sized line graphs)."""
    a, b = torch.triu_indices(n, n, offset=1)
    edges = []
    for g in range(graphs):
        rank = torch.randperm(n, generator=gen)
        keep = torch.rand(a.numel(), generator=gen) < 3.0 / n
        edges.append(torch.stack([rank[a[keep]], rank[b[keep]]]) + g * n)
    return torch.cat(edges, 1)


def _dag_rows(quick: bool, backend, device, repeats, ref_repeats: int = 3) -> list[Row]:
    """A batch of small DAGs with matrix states (pLSTM's edge states on molecules).

    Against the reference loop; with ``--backend triton`` the PyTorch wavefront path is the
    baseline column as well (the same levels as three launches per level instead of one).
    """
    G, n, H, K = (8, 24, 2, 8) if quick else (256, 40, 4, 16)
    ei = _random_dags(G, n, torch.Generator().manual_seed(0)).to(device)
    S, L = G * n, ei.shape[1]
    x = torch.randn(S, H, K, K, device=device) / K
    w = torch.rand(L, H, device=device) - 0.5
    plan = DagScanPlan.from_edge_index(ei, S)
    name = f"{G} DAGs x {n} states L{L} depth{plan.depth} H{H} {K}x{K}"

    def fast_fn(x, w):
        return dag_scan(x, w, ei, plan=plan, backend=backend)

    def ref_fn(x, w):
        return dag_scan(x, w, ei, plan=plan, backend="reference")

    def torch_fn(x, w):
        return dag_scan(x, w, ei, plan=plan, backend="torch")

    with_torch = backend == "triton"
    rows = []
    for mode in ("fwd", "fwd+bwd"):
        ins = (x, w) if mode == "fwd" else tuple(_grad_inputs(x, w))

        def timed(fn, reps, ins=ins, mode=mode):
            run = (lambda: fn(*ins)) if mode == "fwd" else _fwd_bwd(fn, *ins)
            return _time(run, device, reps)

        fast, ref = timed(fast_fn, repeats), timed(ref_fn, ref_repeats)
        row = Row("dag_scan", name, mode, fast, ref, ref / fast)
        if with_torch:
            base = timed(torch_fn, repeats)
            row.baseline, row.baseline_ms, row.ratio_to_baseline = "torch path", base, fast / base
        rows.append(row)
    return rows


def _grid_rows(quick: bool, backend, device, repeats, ref_repeats: int = 3) -> list[Row]:
    """The 2D pLSTM scan of a small vision model: 12 x 12 patches, dim 32 in 4 heads, the four
    corners of 64 images stacked on the batch axis (as ``PLSTM2D`` runs them).

    Against the reference loop; with ``--backend triton`` the PyTorch path that ``"torch"``
    picks for this size is the baseline column as well.
    """
    B, X, Y, H, K = (8, 6, 6, 2, 4) if quick else (256, 12, 12, 4, 8)
    q, k, v = (torch.randn(B, X, Y, H, K, device=device) / K**0.5 for _ in range(3))
    gates = [torch.rand(B, X, Y, H, device=device) for _ in range(8)]
    gates[:4] = [0.5 * g for g in gates[:4]]  # transitions: P-mode-like, sum <= 1
    gates[3] = None  # D-mode's missing cross transition
    name = f"B{B} {X}x{Y} H{H} K=V={K}"
    ins = (q, k, v, *[g for g in gates if g is not None])

    def call(be):
        def fn(q, k, v, *gs):
            it = iter(gs)
            full = [None if g is None else next(it) for g in gates]
            return grid_scan_2d(q, k, v, *full, backend=be)[0]  # h, as PLSTM2D uses it

        return fn

    rows = []
    for mode in ("fwd", "fwd+bwd"):
        args = ins if mode == "fwd" else tuple(_grad_inputs(*ins))

        def timed(fn, reps, args=args, mode=mode):
            run = (lambda: fn(*args)) if mode == "fwd" else _fwd_bwd(fn, *args)
            return _time(run, device, reps)

        fast, ref = timed(call(backend), repeats), timed(call("reference"), ref_repeats)
        row = Row("grid_scan_2d", name, mode, fast, ref, ref / fast)
        if backend == "triton":
            base = timed(call("torch"), repeats)
            row.baseline, row.baseline_ms, row.ratio_to_baseline = "torch path", base, fast / base
        rows.append(row)
    return rows


class _GRUCombine(torch.nn.Module):
    """A symmetrised GRU-cell combine (the LCM aggregator's binary operator)."""

    def __init__(self, channels: int):
        super().__init__()
        self.cell = torch.nn.GRUCell(channels, channels)

    def forward(self, left: torch.Tensor, right: torch.Tensor) -> torch.Tensor:
        return 0.5 * (self.cell(left, right) + self.cell(right, left))


def _segments(kind: str, quick: bool, device) -> tuple[str, torch.Tensor]:
    if kind == "uniform":
        E, N = (2048, 64) if quick else (32768, 1024)
        lengths = torch.full((N,), E // N)
        name = f"uniform E{E} N{N}"
    else:
        E, N = (1024, 32) if quick else (8192, 256)
        hub = E // 10
        rest = E - hub
        lengths = torch.full((N - 1,), rest // (N - 1))
        lengths[: rest - int(lengths.sum())] += 1
        lengths = torch.cat([torch.tensor([hub]), lengths])
        name = f"skewed E{E} N{N} hub{hub}"
    ptr = torch.zeros(N + 1, dtype=torch.long)
    ptr[1:] = lengths.cumsum(0)
    return name, ptr.to(device)


def _segment_rows(
    op: str, quick: bool, backend, device, repeats, ref_repeats: int = 3
) -> list[Row]:
    fn = segment_tree_reduce if op == "segment_tree_reduce" else segment_scan
    C = 128
    rows = []
    combine_gru = _GRUCombine(C).to(device)
    for kind in ("uniform", "skewed"):
        seg_name, ptr = _segments(kind, quick, device)
        E = int(ptr[-1])
        x = torch.randn(E, C, device=device)
        combos = [("sum", "sum", backend)]
        if op == "segment_tree_reduce":
            # a learned combine has no Triton path: it runs the vectorised level schedule
            combos.append(("GRU-cell", combine_gru, None if backend == "triton" else backend))
        for cname, combine, be in combos:
            name = f"{seg_name} C{C} {cname}"

            def fast_fn(x, combine=combine, be=be, ptr=ptr):
                return fn(x, ptr, combine, backend=be)

            def ref_fn(x, combine=combine, ptr=ptr):
                return fn(x, ptr, combine, backend="reference")

            fast = _time(lambda fast_fn=fast_fn, x=x: fast_fn(x), device, repeats)
            ref = _time(lambda ref_fn=ref_fn, x=x: ref_fn(x), device, ref_repeats)
            rows.append(Row(op, name, "fwd", fast, ref, ref / fast))
            (gx,) = _grad_inputs(x)
            fast = _time(_fwd_bwd(fast_fn, gx), device, repeats)
            ref = _time(_fwd_bwd(ref_fn, gx), device, ref_repeats)
            rows.append(Row(op, name, "fwd+bwd", fast, ref, ref / fast))
    return rows


def _status_kib(field: str) -> float:
    """A memory field of ``/proc/self/status`` in KiB: ``VmRSS`` now, ``VmHWM`` its peak.

    ``VmHWM`` belongs to this process image. ``getrusage``'s ``ru_maxrss`` does not: Linux
    carries the forking parent's peak across ``exec``, so a child spawned by a benchmark that
    already holds 1.5 GB would report at least that much.
    """
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return float(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def _hub_memory_child(queue, quick: bool) -> None:
    """Peak resident memory added by a GRU-combine tree reduction over a degree-3,276 hub."""
    torch.manual_seed(0)
    C = 128
    E, hub = (4096, 410) if quick else (32768, 3276)
    n_rest = (E - hub) // 10
    lengths = [hub] + [10] * n_rest
    lengths[-1] += E - sum(lengths)
    ptr = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()])
    x = torch.randn(E, C, requires_grad=True)
    combine = _GRUCombine(C)
    before = _status_kib("VmRSS")
    t0 = time.perf_counter()
    out = segment_tree_reduce(x, ptr, combine)
    out.sum().backward()
    seconds = time.perf_counter() - t0
    after = _status_kib("VmHWM")  # peak resident memory of this process
    queue.put({"E": E, "hub": hub, "C": C, "seconds": seconds, "peak_MiB": (after - before) / 1024})


def _hub_memory(quick: bool) -> dict:
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_hub_memory_child, args=(queue, quick))
    proc.start()
    result = queue.get(timeout=600)
    proc.join()
    return result


# --------------------------------------------------------------------------------------------


def _fmt(x: float | None, spec: str) -> str:
    return "-" if x is None else format(x, spec)


def print_table(rows: list[Row]) -> None:
    header = (
        f"{'op':<20} {'case':<36} {'mode':<8} {'fast ms':>9} {'ref ms':>9} {'x ref':>7} "
        f"{'baseline':<13} {'base ms':>9} {'fast/base':>9}"
    )
    print(header)
    print("-" * len(header))
    for r in rows:
        print(
            f"{r.op:<20} {r.case:<36} {r.mode:<8} {r.fast_ms:>9.2f} "
            f"{_fmt(r.reference_ms, '9.2f'):>9} {_fmt(r.speedup_vs_reference, '7.1f'):>7} "
            f"{r.baseline or '-':<13} {_fmt(r.baseline_ms, '9.2f'):>9} "
            f"{_fmt(r.ratio_to_baseline, '9.2f'):>9}"
        )
        for k, v in r.extra.items():
            print(f"{'':<20} {k}: {v:.3g}")


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(
        prog="python -m graphseq.kernels.bench", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--ops", nargs="+", choices=OPS, default=list(OPS))
    parser.add_argument("--quick", action="store_true", help="small shapes (smoke run)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument(
        "--ref-repeats", type=int, default=3,
        help="timed runs of each reference loop, after one warm-up, as for the fast paths",
    )  # fmt: skip
    parser.add_argument("--backend", choices=("torch", "triton"), default=None)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", default="bench_results/kernels.json")
    parser.add_argument("--no-memory", action="store_true", help="skip the hub memory check")
    args = parser.parse_args(argv)
    for flag in ("repeats", "ref_repeats"):
        if getattr(args, flag) < 1:
            parser.error(f"--{flag.replace('_', '-')} must be >= 1, got {getattr(args, flag)}")
    device = torch.device(args.device)
    torch.manual_seed(0)
    info = machine()
    print("machine:", json.dumps(info))
    rows: list[Row] = []
    failed: dict[str, str] = {}
    memory = None
    for op in args.ops:
        err = _gate(op, args.backend, device)
        if err is not None:
            failed[op] = err
            print(f"{op}: correctness gate FAILED, not timed: {err}")
            continue
        if op == "linear_scan":
            new = _linear_scan_rows(
                args.quick, args.backend, device, args.repeats, args.ref_repeats
            )
            if device.type == "cuda" and not args.quick:
                new += _bandwidth_rows(args.backend, device, args.repeats)
        elif op == "chunked_matrix_scan":
            new = _chunked_rows(args.quick, args.backend, device, args.repeats, args.ref_repeats)
        elif op == "dag_scan":
            new = _dag_rows(args.quick, args.backend, device, args.repeats, args.ref_repeats)
        elif op == "grid_scan_2d":
            new = _grid_rows(args.quick, args.backend, device, args.repeats, args.ref_repeats)
        else:
            new = _segment_rows(
                op, args.quick, args.backend, device, args.repeats, args.ref_repeats
            )
            if op == "segment_tree_reduce" and not args.no_memory and device.type == "cpu":
                memory = _hub_memory(args.quick)
        print_table(new)  # as soon as an op is done, so a long run shows progress
        print(flush=True)
        rows += new
    print("all ops:")
    print_table(rows)
    if memory is not None:
        print(
            f"\nsegment_tree_reduce GRU-cell combine, hub of {memory['hub']} among {memory['E']} "
            f"elements (C={memory['C']}), fwd+bwd: peak RSS +{memory['peak_MiB']:.0f} MiB, "
            f"{memory['seconds']:.2f} s"
        )
    result = {
        "machine": info,
        "command": "python -m graphseq.kernels.bench "
        + " ".join(argv if argv is not None else sys.argv[1:]),
        "device": str(device),
        "rows": [asdict(r) for r in rows],
        "hub_memory": memory,
        "failed": failed,
    }
    if args.out:  # atomically: a killed run leaves the previous file whole
        path = os.path.abspath(args.out)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = f"{path}.{os.getpid()}.tmp"
        with open(tmp, "w") as fh:
            json.dump(result, fh, indent=2)
        os.replace(tmp, path)
        print(f"\nwrote {args.out}")
    return result


if __name__ == "__main__":
    main()
