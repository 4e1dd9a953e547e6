"""Files the trainer writes: checkpoints, results JSON, learning-curve PNG; machine and git info.

Every write goes to a temporary file in the same folder and is renamed into place, so a kill
never leaves half a file. Reads that fail raise :class:`CheckpointError` / :class:`ResultsFileError`
naming the file and what to do; nothing is deleted or overwritten on the way.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import platform
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import torch

__all__ = [
    "CheckpointError",
    "ResultsFileError",
    "git_commit",
    "load_checkpoint",
    "machine_info",
    "plot_curves",
    "read_json",
    "save_checkpoint",
    "write_json",
    "write_text",
]


class CheckpointError(RuntimeError):
    """A checkpoint exists but cannot be read (corrupted, truncated or not a checkpoint)."""


class ResultsFileError(RuntimeError):
    """A results JSON exists but cannot be read."""


def _atomic_write(path: Path, write) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        # mkstemp creates the file private (0600); give it a plain file's mode (umask)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _clean(obj: Any) -> Any:
    # JSON has no NaN/inf: write them as null
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    return obj


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write ``obj`` as indented JSON, atomically (NaN/inf become null)."""
    data = json.dumps(_clean(obj), indent=2, allow_nan=False).encode() + b"\n"
    _atomic_write(Path(path), lambda f: f.write(data))


def write_text(path: str | os.PathLike, text: str) -> None:
    _atomic_write(Path(path), lambda f: f.write(text.encode()))


def read_json(path: str | os.PathLike, *, what: str = "results file", hint: str = "") -> Any:
    """Read a JSON file; an unreadable one raises :class:`ResultsFileError` naming it."""
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError, UnicodeDecodeError) as err:
        raise ResultsFileError(
            f"{what} {path} is unreadable ({type(err).__name__}: {err}). It was left untouched. "
            + (hint or "Move it away or delete it to regenerate it.")
        ) from err


def save_checkpoint(path: str | os.PathLike, state: dict[str, Any]) -> None:
    """``torch.save(state)`` atomically; ``state`` must hold only tensors and plain containers."""
    _atomic_write(Path(path), lambda f: torch.save(state, f))


def load_checkpoint(path: str | os.PathLike, *, hint: str = "") -> dict[str, Any]:
    """Load a checkpoint with ``torch.load(weights_only=True)`` (no arbitrary unpickling).

    Raises:
        CheckpointError: the file is truncated, corrupted or not a graphseq checkpoint; the
            message names the file and what to do. The file is left untouched.
    """
    path = Path(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise CheckpointError(
            f"checkpoint {path} is unreadable ({type(err).__name__}: {str(err)[:200]}). "
            "It was left untouched and no finished result was changed. "
            + (hint or "Delete it to restart this run from epoch 0.")
        ) from err
    if not isinstance(state, dict) or "format" not in state or "model" not in state:
        raise CheckpointError(
            f"checkpoint {path} is not a graphseq training checkpoint (missing 'format'/'model'). "
            + (hint or "Delete it to restart this run from epoch 0.")
        )
    return state


def git_commit(start: str | os.PathLike | None = None) -> str | None:
    """``git rev-parse HEAD`` of the checkout holding graphseq (``+dirty`` if modified)."""
    cwd = Path(start) if start is not None else Path(__file__).resolve().parent
    try:
        head = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=10
        )
        if head.returncode != 0:
            return None
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=cwd, capture_output=True, text=True, timeout=10,
        )  # fmt: skip
        return head.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return None


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info(device: torch.device | None = None) -> dict[str, Any]:
    """Hardware and software the run used."""
    import torch_geometric

    info: dict[str, Any] = {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_geometric": torch_geometric.__version__,
        "cpu": _cpu_name(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "device": str(device) if device is not None else "cpu",
    }
    if device is not None and device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    try:
        info["load_average"] = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        pass
    return info


def plot_curves(
    path: str | os.PathLike,
    history: list[dict[str, Any]],
    *,
    metric: str,
    title: str,
    best_epoch: int | None = None,
) -> bool:
    """Learning curves (train loss; valid and test metric) as a PNG. False if no matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg", force=False)
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    epochs = [h["epoch"] for h in history]
    fig, (ax_loss, ax_metric) = plt.subplots(1, 2, figsize=(10, 3.8))
    ax_loss.plot(epochs, [h.get("train_loss") for h in history], label="train loss")
    ax_loss.set_xlabel("epoch")
    ax_loss.set_ylabel("loss")
    ax_loss.set_yscale("log")
    for split in ("train", "valid", "test"):
        values = [h.get(f"{split}_{metric}") for h in history]
        if any(v is not None for v in values):
            ax_metric.plot(epochs, [math.nan if v is None else v for v in values], label=split)
    if best_epoch is not None:
        ax_metric.axvline(
            best_epoch, color="grey", ls=":", label=f"best valid (epoch {best_epoch})"
        )
    ax_metric.set_xlabel("epoch")
    ax_metric.set_ylabel(metric)
    for ax in (ax_loss, ax_metric):
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    tmp = Path(path).with_suffix(".tmp.png")
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, path)
    return True
