"""OGB leaderboard run for a graphseq model: 10 seeds, mean ± std, JSON + Markdown; resumable.

The same as ``graphseq submit`` (see ``graphseq/cli.py``), as a script:

    python examples/ogb_submit.py ogbg-molhiv --model gin-vn               # OGB's settings
    python examples/ogb_submit.py ogbg-molesol --model gin --seeds 3 --epochs 50
    torchrun --nproc_per_node=2 examples/ogb_submit.py ogbg-molhiv --model gin

Data: ``--data-dir`` or ``$GRAPHSEQ_DATA`` must hold ``moleculenet/<name>.csv`` or an OGB
download (see ``graphseq.datasets.molecules``). Kill it at any time; the same command continues
with the unfinished seeds.
"""

from __future__ import annotations

import argparse
import json

from graphseq.train import CheckpointError, ResultsFileError, submit
from graphseq.train.distributed import is_main_process


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("benchmark", help="e.g. ogbg-molhiv, ogbg-molesol, ogbg-molfreesolv")
    p.add_argument("--model", default="gin-vn")
    p.add_argument("--seeds", type=int, default=10)
    p.add_argument("--epochs", type=int, help="default: OGB's 100")
    p.add_argument("--data-dir")
    p.add_argument("--out", default="submissions")
    p.add_argument("--threads", type=int, default=1, help="torch threads per process")
    args = p.parse_args(argv)
    # checked before the dataset is loaded; what submit refuses is reported like graphseq
    # submit reports it (one line naming the problem), not as a traceback
    for flag in ("seeds", "epochs", "threads"):
        value = getattr(args, flag)
        if value is not None and value < 1:
            p.error(f"--{flag} must be >= 1, got {value}")
    try:
        sub = submit(
            args.benchmark, args.model, seeds=args.seeds, out_dir=args.out, epochs=args.epochs,
            data_dir=args.data_dir, threads=args.threads,
        )  # fmt: skip
    except (ValueError, TypeError, ImportError, FileNotFoundError, CheckpointError,
            ResultsFileError) as err:  # fmt: skip
        p.error(str(err))
    if not is_main_process():  # under torchrun one line, as graphseq submit
        return
    print(
        json.dumps(
            {
                k: sub[k]
                for k in (
                    "dataset",
                    "method",
                    "metric",
                    "test_mean",
                    "test_std",
                    "valid_mean",
                    "valid_std",
                    "num_parameters",
                )
            }
        )
    )


if __name__ == "__main__":
    main()
