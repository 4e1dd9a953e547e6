"""Several seeds of one benchmark and model: ``graphseq run`` and ``graphseq submit``.

Each seed is one :func:`~graphseq.train.fit` in its own folder ``seed<k>/`` (checkpoint,
results JSON, plot). A rerun of the same command skips finished seeds and resumes the
unfinished one from its checkpoint, so a killed run loses at most the current epoch.

``submit`` is the OGB leaderboard protocol: 10 seeds (0..9) with OGB's example settings, the mean
and standard deviation of the validation and test metric (test at the best validation epoch),
parameter count, hardware and the exact command, written as ``submission.json`` and
``submission.md``.
"""

from __future__ import annotations

import math
import os
import shlex
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from graphseq.train.benchmarks import get_benchmark
from graphseq.train.distributed import DistEnv, init_distributed, is_main_process
from graphseq.train.io import machine_info, write_json, write_text
from graphseq.train.trainer import TrainConfig, fit

__all__ = ["format_table", "run_benchmark", "submit", "summarize"]


def _mean_std(values: list[float]) -> tuple[float | None, float | None]:
    values = [v for v in values if v is not None and not math.isnan(v)]
    if not values:
        return None, None
    std = statistics.stdev(values) if len(values) > 1 else None  # undefined for one seed
    return statistics.fmean(values), std


def summarize(results: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean and sample standard deviation over seeds of the valid/test metric at the best epoch.

    Both means are over the same seeds, ``seeds_in_mean``: those with a best epoch whose test
    score is a number (a NaN or missing test score drops the seed from both)."""
    scored = [r for r in results if r.get("best") and _mean_std([r["best"]["test"]])[0] is not None]
    valid = [r["best"]["valid"] for r in scored]
    test = [r["best"]["test"] for r in scored]
    vm, vs = _mean_std(valid)
    tm, ts = _mean_std(test)
    first = results[0] if results else {}
    return {
        "benchmark": first.get("benchmark"),
        "model": first.get("model"),
        "metric": first.get("metric"),
        "seeds": [r["seed"] for r in results],
        # the seeds behind the mean: a run without a best epoch (e.g. a NaN metric every
        # epoch) or a NaN test score drops out of it
        "seeds_in_mean": [r["seed"] for r in scored],
        "valid_mean": vm,
        "valid_std": vs,
        "test_mean": tm,
        "test_std": ts,
        "num_parameters": first.get("num_parameters"),
        # processes per seed (torchrun): a rerun skips finished seeds whatever their world size,
        # and the effective batch is world_size * batch_size
        "world_sizes": {r["seed"]: int(r.get("world_size") or 1) for r in results},
        "mean_epoch_time_s": _mean_std([r.get("mean_epoch_time_s") for r in results])[0],
        "wall_time_s": sum(r.get("wall_time_s") or 0.0 for r in results),
    }


def _fmt(v: float | None, digits: int = 4) -> str:
    return "-" if v is None else f"{v:.{digits}f}"


def format_table(results: list[dict[str, Any]], summary: dict[str, Any]) -> str:
    """Plain-text table: one row per seed, then mean ± std."""
    metric = summary.get("metric") or "metric"
    head = ["seed", "best epoch", "epochs", f"valid {metric}", f"test {metric}", "time (s)"]
    rows = [
        [
            str(r["seed"]), str(r.get("best_epoch")), str(r.get("epochs_run")),
            _fmt((r.get("best") or {}).get("valid")), _fmt((r.get("best") or {}).get("test")),
            f"{r.get('wall_time_s', 0):.1f}",
        ]
        for r in results
    ]  # fmt: skip
    n_in, n_all = len(summary.get("seeds_in_mean", results)), len(results)
    rows.append(
        [
            "mean ± std" if n_in == n_all else f"mean ± std ({n_in} of {n_all} seeds)", "", "",
            f"{_fmt(summary['valid_mean'])} ± {_fmt(summary['valid_std'])}",
            f"{_fmt(summary['test_mean'])} ± {_fmt(summary['test_std'])}",
            f"{summary['wall_time_s']:.1f}",
        ]
    )  # fmt: skip
    widths = [max(len(x[i]) for x in [head, *rows]) for i in range(len(head))]
    line = lambda cells: "  ".join(c.rjust(w) for c, w in zip(cells, widths))  # noqa: E731
    title = (
        f"{summary['benchmark']} / {summary['model']}: {summary['num_parameters']:,} parameters, "
        f"{'higher' if results and results[0].get('higher_is_better') else 'lower'} is better"
    )
    return "\n".join([title, line(head), line(["-" * w for w in widths]), *map(line, rows)])


def run_benchmark(
    benchmark: str,
    model: str = "gin",
    *,
    seeds: int | list[int] | None = None,
    out_dir: str | Path = "results",
    data_dir: str | Path | None = None,
    cache_dir: str | Path | None = None,
    epochs: int | None = None,
    batch_size: int | None = None,
    lr: float | None = None,
    weight_decay: float | None = None,
    schedule: str | None = None,
    warmup_epochs: int | None = None,
    model_args: dict[str, Any] | None = None,
    patience: int | None = None,
    device: str = "auto",
    threads: int | None = None,
    progress: bool = True,
    tensorboard: bool = False,
    log=print,
    env: DistEnv | None = None,
    extra: dict[str, Any] | None = None,
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Run ``model`` on ``benchmark`` for several seeds; benchmark defaults fill unset options.

    Results go to ``<out_dir>/<benchmark>/<model>/seed<k>/`` and ``summary.json``; finished seeds
    are skipped on a rerun. Returns ``(per-seed results, summary)``. A benchmark's default
    warm-up is shortened to ``epochs - 1`` when ``epochs`` leaves no room for it.
    """
    bench = get_benchmark(benchmark)
    missing = bench.missing_requirements()
    if missing:
        raise ImportError(
            f"benchmark {benchmark!r} needs {', '.join(missing)}: pip install 'graphseq[chem]'"
        )
    from graphseq.models import get_model

    if batch_size is not None and bench.level == "node":
        raise ValueError(
            f"batch_size: benchmark {benchmark!r} trains on its one graph at once (level "
            "'node'), so a batch size does not apply; leave it unset"
        )
    entry = get_model(model)
    d = bench.defaults
    margs = {k: v for k, v in d.get("model", {}).items() if k in entry.hyperparameters()}
    margs.update(model_args or {})
    why = bench.incompatibility(model, margs)
    if why is not None:
        raise ValueError(
            f"model {model!r} cannot run on benchmark {benchmark!r}: {why}; models that run "
            f"on {benchmark!r}: {', '.join(bench.models()) or 'none registered'}"
        )
    if seeds is None:
        seeds = int(d.get("seeds", 1))
    seed_list = list(range(seeds)) if isinstance(seeds, int) else list(seeds)
    if not seed_list:
        raise ValueError("seeds: need at least one seed")
    n_epochs = epochs if epochs is not None else int(d.get("epochs", 100))
    schedule = schedule if schedule is not None else str(d.get("schedule", "constant"))
    if warmup_epochs is None:
        warmup_epochs = int(d.get("warmup_epochs", 0)) if schedule == "cosine" else 0
        warmup_epochs = max(0, min(warmup_epochs, n_epochs - 1))
    base = TrainConfig(
        benchmark=benchmark,
        model=model,
        model_args=margs,
        epochs=n_epochs,
        batch_size=batch_size if batch_size is not None else int(d.get("batch_size", 32)),
        lr=lr if lr is not None else float(d.get("lr", 1e-3)),
        weight_decay=weight_decay if weight_decay is not None else float(d.get("weight_decay", 0)),
        schedule=schedule,
        warmup_epochs=warmup_epochs,
        patience=patience,
        device=device,
        threads=threads,
        progress=progress,
        tensorboard=tensorboard,
    )
    own_env = env is None
    env = env if env is not None else init_distributed(device)
    folder = Path(out_dir) / benchmark / model
    say = log if env.is_main else (lambda *a, **k: None)
    try:
        if threads is not None:
            import torch

            torch.set_num_threads(threads)
        t0 = time.perf_counter()
        with env.main_first():  # rank 0 builds the dataset cache, the others then read it
            task = bench.load(data_dir, cache_dir)
        bench.check_task(task)
        why = bench.incompatibility(model, margs, task.spec)  # undeclared ones: now known
        if why is not None:
            raise ValueError(f"model {model!r} cannot run on benchmark {benchmark!r}: {why}")
        say(
            f"{benchmark}: {task.task_type}, metric {task.metric}, sizes "
            + "/".join(str(v) for v in task.info.get("sizes", {}).values())
            + f" (train/valid/test), data: {task.info.get('source')} "
            f"[loaded in {time.perf_counter() - t0:.1f} s]"
        )
        build = task.info.get("build") or {}
        if build.get("lenient_smiles") or build.get("dropped_smiles"):
            say(
                f"  note: {build['lenient_smiles']} SMILES parsed only without RDKit's valence "
                f"check, {build['dropped_smiles']} unparsable and dropped (see the results JSON)"
            )
        say(
            f"model {model} {margs}, {base.epochs} epochs, "
            + ("full graph" if bench.level == "node" else f"batch {base.batch_size}")
            + f", lr {base.lr}"
            + (
                f" ({base.schedule}, warm-up {base.warmup_epochs})"
                if base.schedule != "constant"
                else ""
            )
            + (f", weight decay {base.weight_decay}" if base.weight_decay else "")
            + ", "
            f"seeds {seed_list}, world size {env.world_size}, device {env.device}; "
            f"writing to {folder}"
        )
        results = []
        for seed in seed_list:
            cfg = replace(base, seed=seed)
            seed_dir = folder / f"seed{seed}"
            was_done = (seed_dir / "results.json").exists()
            r = fit(task, cfg, seed_dir, env=env, extra=extra)
            results.append(r)
            best = r.get("best") or {}
            say(
                f"seed {seed}: {'finished earlier, skipped' if was_done else 'done'} — "
                f"valid {task.metric} {_fmt(best.get('valid'))}, test {_fmt(best.get('test'))} "
                f"(best epoch {r.get('best_epoch')}, {r.get('wall_time_s', 0):.1f} s)"
            )
        if env.is_main and out_dir is not None and any(r.get("plot") is None for r in results):
            say(
                "  note: matplotlib is not installed, so no curves.png was written "
                "(pip install 'graphseq[plot]')"
            )
        summary = summarize(results)
        if len(set(summary["world_sizes"].values())) > 1:
            say(
                f"  note: the seeds ran with different numbers of processes "
                f"{summary['world_sizes']} (torchrun; the effective batch differs), so the mean "
                "mixes two protocols; rerun them with one world size into a fresh --out"
            )
        summary["machine"] = machine_info(env.device)
        summary["command"] = _command()
        if env.is_main:
            write_json(folder / "summary.json", {"summary": summary, "seeds": [
                {k: r.get(k) for k in ("seed", "best_epoch", "best", "epochs_run", "wall_time_s")}
                for r in results
            ]})  # fmt: skip
        return results, summary
    finally:
        if own_env:
            env.close()


def _command() -> str:
    argv = list(sys.argv)
    via_cli = bool(argv) and os.path.basename(argv[0]) in ("cli.py", "__main__.py", "graphseq")
    if via_cli:
        argv[0] = "graphseq"
    command = " ".join(shlex.quote(a) for a in argv)
    world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    if world <= 1 and not via_cli and argv and argv[0].endswith(".py"):
        # a script (examples/ogb_submit.py) is run by the interpreter: the examples are not
        # executable files, so its bare path would not reproduce the run
        command = "python " + command
    if world > 1:  # launched by torchrun: the command that reproduces the run says so
        launcher = f"torchrun --nproc_per_node={world} "
        # the CLI runs as a module; a script (examples/ogb_submit.py) keeps its own path
        rest = "-m graphseq.cli " + command.split(" ", 1)[-1] if via_cli else command
        command = launcher + rest
    return command


def submit(
    benchmark: str,
    model: str,
    *,
    seeds: int = 10,
    out_dir: str | Path = "submissions",
    log=print,
    **kwargs: Any,
) -> dict[str, Any]:
    """The OGB leaderboard protocol for ``model`` on ``benchmark``; resumable.

    Runs seeds ``0..seeds-1`` with the benchmark's OGB settings (override with the keyword
    arguments of :func:`run_benchmark`), then writes ``<out_dir>/<benchmark>/<model>/
    submission.json`` and ``submission.md``: valid and test mean ± std (sample standard
    deviation over seeds; test at the best validation epoch), parameter count, the data source
    and OGB version, hardware, the exact command and per-seed results.
    """
    if seeds < 1:
        raise ValueError(f"submit: seeds must be >= 1, got {seeds}")
    command = _command()
    results, summary = run_benchmark(
        benchmark, model, seeds=seeds, out_dir=out_dir, log=log, **kwargs
    )
    first = results[0]
    worlds = summary["world_sizes"]
    if len(set(worlds.values())) > 1:  # the digest leaves the world size out: check it here
        raise ValueError(
            f"submit: the seeds ran with different numbers of processes {worlds} (the "
            "effective batch differs); one submission needs one protocol: rerun them with one "
            "world size into a fresh --out"
        )
    world = int(first.get("world_size") or 1)
    n_in = len(summary["seeds_in_mean"])
    # what OGB's form asks besides the scores: the OGB version; and where the graphs came
    # from (an OGB download, or a MoleculeNet CSV rebuilt with graphseq's scaffold split)
    sources = sorted({str((r.get("task") or {}).get("source")) for r in results})
    try:
        from importlib.metadata import PackageNotFoundError, version

        ogb_version = version("ogb")
    except PackageNotFoundError:
        ogb_version = None
    batch = first["config"].get("batch_size")
    node_level = (first.get("task") or {}).get("level") == "node"
    per_process = (
        "each the whole graph, its loss on a share of the training nodes"
        if node_level  # one graph trained whole: batch_size does not apply (run refuses it)
        else f"{batch} graphs per process and step ({world * batch} in all)"
    )
    sub = {
        "dataset": benchmark,
        "method": model,
        "protocol": f"{len(results)} seeds (0..{seeds - 1})"
        + ("" if n_in == len(results) else f", {n_in} of them with a score in the mean")
        + "; test at best validation epoch; mean ± sample std"
        + ("" if world == 1 else f"; {world} processes (torchrun), {per_process}"),
        "world_size": world,
        "metric": summary["metric"],
        "test_mean": summary["test_mean"],
        "test_std": summary["test_std"],
        "valid_mean": summary["valid_mean"],
        "valid_std": summary["valid_std"],
        "num_parameters": summary["num_parameters"],
        "data": sources[0] if len(sources) == 1 else sources,
        "ogb_version": ogb_version,
        "hardware": summary["machine"],
        "command": command,
        "settings": first["config"],
        "git_commit": first.get("git_commit"),
        "total_wall_time_s": summary["wall_time_s"],
        "mean_epoch_time_s": summary["mean_epoch_time_s"],
        "seeds": [
            {"seed": r["seed"], "best_epoch": r["best_epoch"], **(r.get("best") or {})}
            for r in results
        ],
    }
    folder = Path(out_dir) / benchmark / model
    m = summary["metric"]
    hw = sub["hardware"]
    md = (
        f"# {benchmark}: {model}\n\n"
        f"| Method | Test {m} | Validation {m} | #Params | Hardware |\n"
        "|---|---|---|---|---|\n"
        f"| {model} | {_fmt(sub['test_mean'])} ± {_fmt(sub['test_std'])} "
        f"| {_fmt(sub['valid_mean'])} ± {_fmt(sub['valid_std'])} "
        f"| {sub['num_parameters']:,} | {hw.get('gpu') or hw.get('cpu')} "
        f"({hw.get('cpu_count')} cores) |\n\n"
        f"Protocol: {sub['protocol']}. Total wall time {sub['total_wall_time_s']:.0f} s "
        f"({_fmt(sub['mean_epoch_time_s'], 2)} s per epoch).\n\n"
        f"Data: {sub['data']}; OGB {sub['ogb_version'] or 'not installed'}.\n\n"
        f"Command: `{command}`\n\nCommit: `{sub['git_commit']}`\n\n"
        + format_table(results, summary).replace("\n", "\n    ").join(["    ", "\n"])
    )
    env = kwargs.get("env")
    if env.is_main if env is not None else is_main_process():
        write_json(folder / "submission.json", sub)
        write_text(folder / "submission.md", md)
    return sub
