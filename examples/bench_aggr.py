"""Speed and memory of graphseq's aggregations against PyG's, on CPU.

Every (degree distribution, aggregator) case runs in its own subprocess, one thread
(``torch.set_num_threads(1)``, ``OMP_NUM_THREADS=1``), under an address-space limit
(``resource.setrlimit(RLIMIT_AS)``, ``--mem-limit-gb``, default 8) so that an aggregator that
pads to the largest degree fails inside its subprocess instead of taking the machine down; such
a failure is reported as ``OOM (> limit)``. Reported: median CPU time (``time.process_time``)
of the forward pass and of forward + backward (``out.sum().backward()``, including the
forward), and the peak-RSS increase of the subprocess over its state before the first pass
(``VmHWM``), after the forward runs and after the forward + backward runs.

Degree distributions (C = 128, ``index`` sorted, as in research/lcm.md §6.2):

* ``uniform``: N = 32,768 elements to B = 1,024 nodes (``randint(0, B).sort()``);
* ``skewed``: N = 8,192, B = 256, one node holds N/10 of the elements, the rest uniform;
* ``hub``: N = 32,768, B = 1,024, one node of degree 3,276, the rest uniform.

    python examples/bench_aggr.py                  # the full table (several minutes)
    python examples/bench_aggr.py --configs skewed --aggrs sum lcm pyg_lcm

Prints a markdown table and writes ``--out`` (JSON).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import statistics
import subprocess
import sys
import time

CONFIGS = {
    "uniform": {"N": 32768, "B": 1024, "hub": 0},
    "skewed": {"N": 8192, "B": 256, "hub": 8192 // 10},
    "hub": {"N": 32768, "B": 1024, "hub": 3276},
}
AGGRS = (
    "sum",
    "max",
    "pyg_gru",
    "pyg_lstm",
    "pyg_lcm",
    "lcm",
    "lcm_mlp",
    "recurrent_gru",
    "recurrent_lstm",
)
LABELS = {
    "sum": "sum (PyG)",
    "max": "max (PyG)",
    "pyg_gru": "GRUAggregation (PyG)",
    "pyg_lstm": "LSTMAggregation (PyG)",
    "pyg_lcm": "LCMAggregation (PyG)",
    "lcm": "LCMAggregation (graphseq, gru)",
    "lcm_mlp": "LCMAggregation (graphseq, mlp)",
    "recurrent_gru": "RecurrentAggregation (graphseq, gru)",
    "recurrent_lstm": "RecurrentAggregation (graphseq, lstm)",
}


def make_index(cfg: dict, seed: int = 0):
    import torch

    gen = torch.Generator().manual_seed(seed)
    n, b, hub = cfg["N"], cfg["B"], cfg["hub"]
    rest = (
        torch.randint(1, b, (n - hub,), generator=gen)
        if hub
        else torch.randint(0, b, (n,), generator=gen)
    )
    index = torch.cat([torch.zeros(hub, dtype=torch.long), rest]) if hub else rest
    return index.sort()[0]


def make_aggr(name: str, c: int):
    from torch_geometric.nn import aggr as pyg

    from graphseq.nn.aggr import LCMAggregation, RecurrentAggregation

    return {
        "sum": lambda: pyg.SumAggregation(),
        "max": lambda: pyg.MaxAggregation(),
        "pyg_gru": lambda: pyg.GRUAggregation(c, c),
        "pyg_lstm": lambda: pyg.LSTMAggregation(c, c),
        "pyg_lcm": lambda: pyg.LCMAggregation(c, c),
        "lcm": lambda: LCMAggregation(c, c),
        "lcm_mlp": lambda: LCMAggregation(c, c, cell="mlp"),
        "recurrent_gru": lambda: RecurrentAggregation(c, c, cell="gru"),
        "recurrent_lstm": lambda: RecurrentAggregation(c, c, cell="lstm"),
    }[name]()


def _rss_mb() -> float:
    """Peak resident memory of this process image (``VmHWM``), in MB.

    Not ``ru_maxrss``: Linux carries the parent's peak across ``exec`` into it.
    """
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return float(line.split()[1]) / 1024  # KiB
    raise RuntimeError("no VmHWM in /proc/self/status")


def run_case(config: str, aggr: str, channels: int, repeats: int, budget_s: float) -> dict:
    """Runs inside the subprocess: time and measure one aggregator on one configuration."""
    import torch

    torch.set_num_threads(1)
    torch.manual_seed(0)
    cfg = CONFIGS[config]
    index = make_index(cfg)
    x = torch.randn(cfg["N"], channels, requires_grad=True)
    module = make_aggr(aggr, channels)
    b = cfg["B"]
    base = _rss_mb()

    def once(backward: bool) -> float:
        t0 = time.process_time()
        out = module(x, index, dim_size=b)
        if backward:
            out.sum().backward()
            x.grad = None
            module.zero_grad(set_to_none=True)
        del out
        return time.process_time() - t0

    result = {}
    for key, backward in (("fwd", False), ("fwd_bwd", True)):
        once(backward)  # an untimed warm-up for every case, however many runs follow
        times = [once(backward)]
        while len(times) < repeats and sum(times) < budget_s:
            times.append(once(backward))
        result[key + "_ms"] = 1000 * statistics.median(times)
        result[key + "_runs"] = len(times)
        result[key + "_rss_mb"] = _rss_mb() - base
    return result


def launch(config: str, aggr: str, args) -> dict:
    """Run one case in a subprocess under an address-space limit."""
    limit = int(args.mem_limit_gb * 2**30)

    def limit_memory():
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", OMP_WAIT_POLICY="PASSIVE")
    cmd = [
        sys.executable,
        os.path.abspath(__file__),
        "--child",
        config,
        aggr,
        "--channels",
        str(args.channels),
        "--repeats",
        str(args.repeats),
        "--budget-s",
        str(args.budget_s),
    ]
    t0 = time.time()
    try:
        proc = subprocess.run(
            cmd,
            capture_output=True,
            text=True,
            env=env,
            preexec_fn=limit_memory,
            timeout=args.timeout_s,
        )
    except subprocess.TimeoutExpired:
        status = f"timeout (> {args.timeout_s:g} s wall)"
        return {"config": config, "aggr": aggr, "status": status, "wall_s": args.timeout_s}
    row = {"config": config, "aggr": aggr, "wall_s": round(time.time() - t0, 1)}
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode == 0 and lines:
        row.update(json.loads(lines[-1]))
        row["status"] = "ok"
    else:
        silent = (
            "(no message)"
            if proc.returncode >= 0
            else f"killed by signal {-proc.returncode} (is --mem-limit-gb too low to start?)"
        )
        err = (proc.stderr.strip().splitlines() or [silent])[-1]
        oom = any(
            s in proc.stderr
            for s in (
                "DefaultCPUAllocator",
                "MemoryError",
                "std::bad_alloc",
                "not enough memory",
                "Cannot allocate memory",
            )
        )
        row["status"] = f"OOM (> {args.mem_limit_gb:g} GB)" if oom else f"failed: {err[:120]}"
        row["error"] = err[:400]
    return row


#: the aggregators that compute an LCM, the rows that get a ratio against PyG's LCM
LCM_ROWS = ("lcm", "lcm_mlp")


def print_table(rows: list[dict]) -> None:
    """The markdown table of ``rows``; the ratio column compares each LCM row with PyG's LCM
    on the same config, and says why it is empty where there is no such pair."""
    ref = {r["config"]: r for r in rows if r["aggr"] == "pyg_lcm" and r["status"] == "ok"}
    tried = {r["config"] for r in rows if r["aggr"] == "pyg_lcm"}
    print(
        "| config | aggregator | fwd CPU ms | fwd+bwd CPU ms | vs PyG LCM fwd / fwd+bwd "
        "| peak RSS increase fwd / fwd+bwd (MB) |"
    )
    print("|---|---|---|---|---|---|")
    for r in rows:
        cfg = CONFIGS[r["config"]]
        desc = f"{r['config']} N={cfg['N']:,} B={cfg['B']:,}"
        if r["status"] != "ok":
            print(f"| {desc} | {LABELS[r['aggr']]} | {r['status']} | | | |")
            continue
        p = ref.get(r["config"])
        if r["aggr"] not in LCM_ROWS:
            ratio = ""
        elif p:
            ratio = f"{r['fwd_ms'] / p['fwd_ms']:.3f}x / {r['fwd_bwd_ms'] / p['fwd_bwd_ms']:.3f}x"
        else:
            ratio = "PyG LCM failed" if r["config"] in tried else "PyG LCM not run"
        print(
            f"| {desc} | {LABELS[r['aggr']]} | {r['fwd_ms']:.1f} | {r['fwd_bwd_ms']:.1f} | "
            f"{ratio} | {r['fwd_rss_mb']:.0f} / {r['fwd_bwd_rss_mb']:.0f} |"
        )


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    p.add_argument("--aggrs", nargs="+", default=list(AGGRS), choices=AGGRS)
    p.add_argument("--channels", type=int, default=128)
    p.add_argument(
        "--repeats", type=int, default=7, help="timed runs per case (at most), after a warm-up"
    )
    p.add_argument(
        "--budget-s",
        type=float,
        default=20.0,
        help="stop repeating a case once its runs took this many CPU seconds",
    )
    p.add_argument("--mem-limit-gb", type=float, default=8.0)
    p.add_argument("--timeout-s", type=float, default=900.0)
    p.add_argument("--out", default="runs/bench_aggr.json")
    p.add_argument("--child", nargs=2, metavar=("CONFIG", "AGGR"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    # --mem-limit-gb -1 ran every case with no limit (setrlimit reads a negative limit as a huge
    # unsigned one), 0 reported "failed: (no message)", --channels 0 timed an empty tensor as
    # "ok" and --repeats 0 still timed one run
    for flag, low in (("channels", 1), ("repeats", 1)):
        if getattr(args, flag) < low:
            p.error(f"--{flag} must be >= {low}, got {getattr(args, flag)}")
    for flag in ("budget_s", "mem_limit_gb", "timeout_s"):
        value = getattr(args, flag)
        if not (math.isfinite(value) and value > 0):
            p.error(f"--{flag.replace('_', '-')} must be a finite number > 0, got {value}")
    if args.child:
        print(json.dumps(run_case(*args.child, args.channels, args.repeats, args.budget_s)))
        return

    import torch
    import torch_geometric

    machine = (
        f"{platform.platform()} | {platform.processor() or platform.machine()} | "
        f"{os.cpu_count()} CPUs | torch {torch.__version__} | "
        f"torch_geometric {torch_geometric.__version__} | 1 thread"
    )
    print(f"# {machine}", flush=True)
    rows = []
    for config in args.configs:
        for aggr in args.aggrs:
            row = launch(config, aggr, args)
            print(
                f"#   {config:8s} {aggr:15s} {row['status']} "
                + (
                    f"fwd {row['fwd_ms']:.1f} ms, fwd+bwd {row['fwd_bwd_ms']:.1f} ms, "
                    f"RSS +{row['fwd_bwd_rss_mb']:.0f} MB"
                    if row["status"] == "ok"
                    else ""
                ),
                flush=True,
            )
            rows.append(row)
    print_table(rows)
    from graphseq.train.io import write_json  # here: the parent imports no torch until now

    write_json(  # atomically (a killed run leaves the previous file whole)
        args.out,
        {"machine": machine, "command": " ".join(sys.argv), "args": vars(args), "rows": rows},
    )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
