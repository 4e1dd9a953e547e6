"""Speed of graphseq's pLSTM against the released ml-jku/plstm PyTorch code, side by side.

Forward + backward of a tiny pLSTM vision model (the brief's reference size: dim 64, 2 heads,
2 PD blocks = 4 pLSTM layers, 96x96 images with patch 8 = 12x12 tokens, batch 32, corner
pooling, float32) on the same input images, in the same process, one CPU thread each. The
released code is not on PyPI and is never copied into graphseq: export it yourself and point
``--plstm-src`` at the folder holding its ``plstm`` package, e.g.

    git clone https://github.com/ml-jku/plstm PLSTM_SRC   # any folder of yours
    pip install --target DEPS compoconf einops             # its dependencies, kept apart
    python examples/bench_plstm.py --plstm-src PLSTM_SRC/src --extra-path DEPS

``--paths`` instead times graphseq's two small-grid paths of ``PLSTM2D`` against each other in
one process, round after round (the compiled ``dag_attention`` kernel, and the dense PyTorch
path it replaces; ``graphseq.nn.plstm.plstm2d.NATIVE_GRID`` switched in turn):

    python examples/bench_plstm.py --paths --dim 32 --heads 4 --depth 1 --batch 64

Without ``--plstm-src`` only graphseq is timed. ``--extra-path`` adds folders to ``sys.path``
(for example where compoconf/einops were installed with ``pip --target``). Writes
``<out>/bench_plstm.json`` with the timings, the ratio and the machine.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

import graphseq.nn.plstm.plstm2d as plstm2d
from graphseq.nn.plstm import PLSTMVision
from graphseq.train.io import machine_info, write_json


def fwd_bwd_seconds(model, images, reps):
    """Best of ``reps`` timed forward+backward passes after one untimed warm-up, the same for
    both sides (a cold single run of one side only overstates the ratio): ``(wall seconds, CPU
    seconds of this process)``. On a shared, loaded machine the CPU time is the steadier of the
    two (it does not count time spent waiting for a core)."""
    times = []
    for i in range(reps + 1):
        model.zero_grad(set_to_none=True)
        t0, c0 = time.perf_counter(), time.process_time()
        model(images).float().square().mean().backward()
        if i > 0:
            times.append((time.perf_counter() - t0, time.process_time() - c0))
    return min(t[0] for t in times), min(t[1] for t in times)


def compare_paths(model, images, rounds):
    """Median CPU and wall seconds of a forward+backward with each small-grid path, timed in
    turn round after round (each after one untimed call of its own), so that a drift of the
    machine's speed hits both alike."""
    times = {"native": [], "dense": []}
    for _ in range(rounds):
        for name in times:
            plstm2d.NATIVE_GRID = name == "native"
            for timed in (False, True):
                model.zero_grad(set_to_none=True)
                t0, c0 = time.perf_counter(), time.process_time()
                model(images).float().square().mean().backward()
                if timed:
                    times[name].append((time.perf_counter() - t0, time.process_time() - c0))
    plstm2d.NATIVE_GRID = True
    return {
        name: {"wall": statistics.median(t[0] for t in v),
               "cpu": statistics.median(t[1] for t in v)}
        for name, v in times.items()
    }  # fmt: skip


def released_model(src: str, args):
    sys.path.insert(0, src)
    from plstm.config.block_stack import BlockStackConfig
    from plstm.config.vision_blocks import pLSTMVisionBlockConfig1
    from plstm.config.vision_model import pLSTMVisionModelConfig
    from plstm.torch.vision_model import pLSTMVisionModel

    f32 = dict(dtype="float32", param_dtype="float32")
    block = pLSTMVisionBlockConfig1(input_dim=args.dim, num_heads=args.heads, **f32)
    stack = BlockStackConfig(block=block, input_dim=args.dim, num_blocks=args.depth, **f32)
    cfg = pLSTMVisionModelConfig(
        dim=args.dim, num_heads=args.heads, num_blocks=args.depth, patch_size=args.patch,
        resolution=(args.image, args.image), output_shape=(2,), channels_first=True,
        pooling="corners", block_stack=stack, **f32,
    )  # fmt: skip
    return pLSTMVisionModel(cfg)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--plstm-src", help="folder holding the released 'plstm' package")
    p.add_argument("--extra-path", nargs="*", default=[], help="folders prepended to sys.path")
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--heads", type=int, default=2)
    p.add_argument("--depth", type=int, default=2, help="PD blocks (2 pLSTM layers each)")
    p.add_argument("--image", type=int, default=96)
    p.add_argument("--patch", type=int, default=8)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--reps", type=int, default=3, help="timed repetitions for graphseq")
    p.add_argument("--ref-reps", type=int, default=1, help="timed repetitions, released code")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default="runs/bench_plstm")
    p.add_argument(
        "--paths",
        action="store_true",
        help="only compare PLSTM2D's compiled and dense small-grid paths (--reps rounds)",
    )
    args = p.parse_args(argv)
    # a count below 1 would time an empty batch or no run at all (min()/median() of nothing)
    for flag in ("dim", "heads", "depth", "image", "patch", "batch", "reps", "ref_reps",
                 "threads"):  # fmt: skip
        if getattr(args, flag) < 1:
            p.error(f"--{flag.replace('_', '-')} must be >= 1, got {getattr(args, flag)}")
    torch.set_num_threads(args.threads)
    sys.path[:0] = args.extra_path
    torch.manual_seed(0)
    images = torch.randn(args.batch, 3, args.image, args.image)

    ours = PLSTMVision(args.image, args.patch, 2, dim=args.dim, heads=args.heads, depth=args.depth)
    result = {"args": vars(args), "machine": machine_info()}
    if args.paths:
        if not plstm2d.native_available():
            raise SystemExit("the compiled dag_attention kernel cannot be built here")
        result["paths"] = paths = compare_paths(ours, images, args.reps)
        grid = args.image // args.patch
        for name, t in paths.items():
            print(f"{name}: {t['cpu']:.3f} s CPU, {t['wall']:.3f} s wall per forward+backward "
                  f"({grid}x{grid} grid, batch {args.batch}, dim {args.dim}, {args.heads} heads, "
                  f"{2 * args.depth} pLSTM layers)", flush=True)  # fmt: skip
        ratio = paths["dense"]["cpu"] / paths["native"]["cpu"]
        print(f"native over dense: {ratio:.2f}x faster (CPU time)", flush=True)
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        write_json(out / "bench_plstm_paths.json", result)
        return
    result["graphseq_params"] = sum(q.numel() for q in ours.parameters())
    result["graphseq_seconds"], result["graphseq_cpu_seconds"] = fwd_bwd_seconds(
        ours, images, args.reps
    )
    print(f"graphseq PLSTMVision ({result['graphseq_params']} parameters): "
          f"{result['graphseq_seconds']:.3f} s wall, {result['graphseq_cpu_seconds']:.3f} s CPU "
          "per forward+backward", flush=True)  # fmt: skip
    if args.plstm_src:
        ref = released_model(args.plstm_src, args)
        result["released_params"] = sum(q.numel() for q in ref.parameters())
        # the released model takes channels-first pixels of the configured resolution
        result["released_seconds"], result["released_cpu_seconds"] = fwd_bwd_seconds(
            ref, images, args.ref_reps
        )
        result["speedup"] = result["released_seconds"] / result["graphseq_seconds"]
        result["speedup_cpu"] = result["released_cpu_seconds"] / result["graphseq_cpu_seconds"]
        print(f"released pLSTMVisionModel ({result['released_params']} parameters): "
              f"{result['released_seconds']:.3f} s wall, {result['released_cpu_seconds']:.3f} s "
              "CPU per forward+backward", flush=True)  # fmt: skip
        print(f"speed-up: {result['speedup']:.1f}x (wall), {result['speedup_cpu']:.1f}x (CPU)",
              flush=True)  # fmt: skip
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "bench_plstm.json", result)


if __name__ == "__main__":
    main()
