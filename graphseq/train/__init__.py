"""One trainer for every benchmark: seeds, ``torchrun``/DDP, checkpoints, results, plots.

* :func:`fit` trains one model with one seed on a :class:`Task` (resumable, rank 0 writes).
* :func:`run_benchmark` runs several seeds of a registered benchmark; :func:`submit` runs the
  OGB leaderboard protocol (10 seeds, mean ± std, JSON + Markdown).
* :func:`get_benchmark` / :func:`list_benchmarks`: the benchmark registry; models come from
  :mod:`graphseq.models`.
"""

from graphseq.train import benchmarks_gsm as _benchmarks_gsm  # noqa: F401  (GSM benchmarks)
from graphseq.train.benchmarks import (
    DEFAULT_BENCHMARK,
    Benchmark,
    Task,
    get_benchmark,
    list_benchmarks,
    register_benchmark,
)
from graphseq.train.distributed import DistEnv, init_distributed, select_device
from graphseq.train.io import CheckpointError, ResultsFileError, load_checkpoint
from graphseq.train.runner import format_table, run_benchmark, submit, summarize
from graphseq.train.trainer import TrainConfig, count_parameters, fit, seed_everything

__all__ = [
    "DEFAULT_BENCHMARK",
    "Benchmark",
    "CheckpointError",
    "DistEnv",
    "ResultsFileError",
    "Task",
    "TrainConfig",
    "count_parameters",
    "fit",
    "format_table",
    "get_benchmark",
    "init_distributed",
    "list_benchmarks",
    "load_checkpoint",
    "register_benchmark",
    "run_benchmark",
    "seed_everything",
    "select_device",
    "submit",
    "summarize",
]
