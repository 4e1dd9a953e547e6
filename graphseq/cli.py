"""The ``graphseq`` command: list and run benchmarks, write results, OGB leaderboard runs.

    graphseq list
    graphseq run [BENCHMARK] [--model gin] [--epochs N] [--seeds K] [--data-dir DIR] ...
    graphseq submit ogbg-molhiv --model gin-vn --seeds 10
    torchrun --nproc_per_node=2 -m graphseq.cli run fake-graph    # DDP, gloo on CPU

``BENCHMARK`` defaults to ``chembl2321810`` (its data ships with RDKit). A rerun of the same
command skips finished seeds and resumes the unfinished one from its checkpoint.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence

__all__ = ["main"]


def _parse_model_args(items: Sequence[str]) -> dict:
    out = {}
    for item in items:
        if "=" not in item:
            raise ValueError(f"--model-arg expects KEY=VALUE, got {item!r}")
        key, value = item.split("=", 1)
        try:
            out[key] = json.loads(value)
        except ValueError:
            out[key] = value
    return out


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="gin", help="registered model (graphseq list shows them)")
    p.add_argument("--epochs", type=int, help="maximum epochs (default: the benchmark's)")
    p.add_argument("--batch-size", type=int, help="graphs per batch and process")
    p.add_argument("--lr", type=float, help="Adam learning rate")
    p.add_argument(
        "--weight-decay", type=float, help="Adam weight decay (default: the benchmark's)"
    )
    p.add_argument(
        "--schedule", choices=("constant", "cosine"),
        help="learning rate over epochs (default: the benchmark's): constant, or cosine decay "
        "after a linear warm-up",
    )  # fmt: skip
    p.add_argument("--warmup-epochs", type=int, help="warm-up epochs of --schedule cosine")
    p.add_argument("--hidden", type=int, help="model width (model argument 'hidden')")
    p.add_argument("--layers", type=int, help="number of layers (model argument 'layers')")
    p.add_argument("--dropout", type=float, help="dropout (model argument 'dropout')")
    p.add_argument(
        "--model-arg", action="append", default=[], metavar="KEY=VALUE",
        help="any other model hyperparameter (JSON value), repeatable",
    )  # fmt: skip
    p.add_argument("--patience", type=int, help="early stopping: epochs without improvement")
    p.add_argument(
        "--data-dir",
        help="folder with the MoleculeNet CSVs or OGB downloads (default: $GRAPHSEQ_DATA, "
        "else ~/.cache/graphseq/data)",
    )
    p.add_argument(
        "--cache-dir", help="where built datasets are kept (default: $GRAPHSEQ_CACHE, else "
        "~/.cache/graphseq)"
    )  # fmt: skip
    p.add_argument("--device", default="auto", help="auto (CUDA if available), cpu, cuda, ...")
    p.add_argument(
        "--threads", type=int,
        help="torch.set_num_threads per process (default on CPU: 1, as torchrun does; small graph "
        "batches gain little from more threads and lose a lot when the cores are shared)",
    )  # fmt: skip
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--tensorboard", action="store_true", help="also write TensorBoard logs")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="graphseq", description="graphseq benchmarks: list, run, submit (OGB protocol)."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="show benchmarks and models")
    from graphseq.train.benchmarks import DEFAULT_BENCHMARK

    run = sub.add_parser("run", help="train a model on a benchmark for one or more seeds")
    run.add_argument("benchmark", nargs="?", default=DEFAULT_BENCHMARK,
                     help=f"benchmark name (default: {DEFAULT_BENCHMARK})")  # fmt: skip
    run.add_argument("--seeds", type=int, help="number of seeds 0..K-1 (default: the benchmark's)")
    run.add_argument("--out", default="results", help="output folder (default: results)")
    _add_common(run)

    sm = sub.add_parser("submit", help="OGB leaderboard protocol: 10 seeds, mean ± std")
    sm.add_argument("benchmark")
    sm.add_argument("--seeds", type=int, default=10, help="number of seeds (OGB: 10)")
    sm.add_argument("--out", default="submissions", help="output folder (default: submissions)")
    _add_common(sm)
    return parser


def _cmd_list() -> int:
    from graphseq.models import list_models
    from graphseq.train.benchmarks import DEFAULT_BENCHMARK, list_benchmarks

    print("Benchmarks:")
    benches = list_benchmarks()
    w = max(len(b.name) for b in benches)
    for b in benches:
        missing = b.missing_requirements()
        star = "*" if b.name == DEFAULT_BENCHMARK else " "
        note = f"  [needs {', '.join(missing)}: pip install 'graphseq[chem]']" if missing else ""
        print(f" {star}{b.name:<{w}}  {b.level:<5}  {b.metric:<6}  {b.description}{note}")
        print(f"  {'':<{w}}  data: {b.data}; models: {', '.join(b.models()) or 'none'}")
    print("(* the default of `graphseq run`)\n\nModels:")
    models = list_models()
    w = max(len(m.name) for m in models)
    for m in models:
        hp = ", ".join(f"{k}={v!r}" for k, v in m.hyperparameters().items())
        print(f"  {m.name:<{w}}  {m.description}  ({hp})")
    return 0


def _run(args: argparse.Namespace, submit: bool) -> int:
    from graphseq.train.distributed import is_main_process
    from graphseq.train.runner import format_table, run_benchmark
    from graphseq.train.runner import submit as submit_fn

    model_args = _parse_model_args(args.model_arg)
    for key in ("hidden", "layers", "dropout"):
        value = getattr(args, key)
        if value is None:
            continue
        if key in model_args and model_args[key] != value:
            raise ValueError(
                f"--{key} {value} and --model-arg {key}={model_args[key]!r} disagree; give "
                f"{key} once"
            )
        model_args[key] = value
    threads = args.threads
    if threads is None:
        from graphseq.train.distributed import select_device

        threads = 1 if select_device(args.device).type == "cpu" else None
    kwargs = dict(
        data_dir=args.data_dir, cache_dir=args.cache_dir, epochs=args.epochs,
        batch_size=args.batch_size, lr=args.lr, weight_decay=args.weight_decay,
        schedule=args.schedule, warmup_epochs=args.warmup_epochs, model_args=model_args,
        patience=args.patience,
        device=args.device, threads=threads, progress=not args.no_progress,
        tensorboard=args.tensorboard, out_dir=args.out,
    )  # fmt: skip
    if submit:
        sub = submit_fn(args.benchmark, args.model, seeds=args.seeds, **kwargs)
        if is_main_process():
            folder = f"{args.out}/{args.benchmark}/{args.model}"
            from graphseq.train.runner import _fmt

            print(
                f"\n{args.benchmark} / {args.model}: test {sub['metric']} "
                f"{_fmt(sub['test_mean'])} ± {_fmt(sub['test_std'])}, valid "
                f"{_fmt(sub['valid_mean'])} ± {_fmt(sub['valid_std'])}, "
                f"{sub['num_parameters']:,} parameters\n"
                f"wrote {folder}/submission.json and submission.md"
            )
        return 0
    results, summary = run_benchmark(args.benchmark, args.model, seeds=args.seeds, **kwargs)
    if is_main_process():
        print()
        print(format_table(results, summary))
        print(f"\nresults, checkpoints and plots: {args.out}/{args.benchmark}/{args.model}/")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``graphseq`` console command; returns the exit status."""
    parser = _parser()
    args = parser.parse_args(argv)
    from graphseq.train.io import CheckpointError, ResultsFileError

    try:
        if args.command == "list":
            return _cmd_list()
        return _run(args, submit=args.command == "submit")
    except (ValueError, TypeError, ImportError, FileNotFoundError) as err:
        print(f"graphseq: error: {err}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # the reader left (`graphseq list | head`): not a folder problem
        # Python flushes stdout again at exit; point it at devnull so that flush is silent.
        try:
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        except (OSError, ValueError):  # stdout is not a file descriptor (captured, replaced)
            pass
        return 141
    except OSError as err:  # a folder that cannot be written: read-only, not ours, a file
        print(
            f"graphseq: error: {err}; choose writable folders with --out and --cache-dir "
            "(or $GRAPHSEQ_CACHE)",
            file=sys.stderr,
        )
        return 2
    except (CheckpointError, ResultsFileError) as err:
        print(f"graphseq: error: {err}", file=sys.stderr)
        return 3
    except KeyboardInterrupt:
        print(
            "\ngraphseq: interrupted; finished seeds and the last epoch's checkpoint are kept — "
            "rerun the same command to continue.",
            file=sys.stderr,
        )
        return 130


if __name__ == "__main__":
    sys.exit(main())
