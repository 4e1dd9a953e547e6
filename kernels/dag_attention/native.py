"""The CPU kernel of :func:`~graphseq.kernels.dag_attention.dag_attention`: ``native.c``,
compiled on first use with the system's C compiler and called through :mod:`ctypes`.

Why C and not C++/torch extensions: the kernel only needs raw float and int64 arrays, so it
has no torch or Python headers to compile against; one file builds in about a second with
``cc`` (``$CC``), against a minute and ``ninja`` for ``torch.utils.cpp_extension``. The
shared libraries are cached in ``$GRAPHSEQ_CACHE_DIR`` (default ``~/.cache/graphseq``, else
a folder in the temporary folder that only this user owns and may write to), named by a hash
of the source, the flags, the compiler and the CPU, written atomically (safe for concurrent
first uses).

:func:`available` says whether it could be built. Without a C compiler (or with
``GRAPHSEQ_NATIVE=0``) it is unavailable and callers fall back to a PyTorch path; the reason
is in :func:`unavailable_reason`. OpenMP is used when the compiler supports ``-fopenmp``
(graphs run in parallel on ``torch.get_num_threads()`` threads).
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shlex
import subprocess
import tempfile
import threading
from pathlib import Path

import torch
from torch import Tensor

from .._autograd import first_order_only
from .plan import DagAttentionPlan

__all__ = ["available", "dag_attention", "unavailable_reason"]

_SOURCE = Path(__file__).with_name("native.c")
_TYPES = {torch.float32: "float", torch.float64: "double"}
#: Lets the compiler reorder sums (vectorised dot products with a tree reduction): rounding
#: only, unlike ``-ffast-math`` it keeps NaN and inf semantics (no ``-ffinite-math-only``).
_REASSOCIATE = ["-fno-math-errno", "-fassociative-math", "-fno-signed-zeros", "-fno-trapping-math"]
#: Graphs with at least this many (ancestor, node) pairs per node on average run the
#: kernel's row form (grids), sparser ones its pair-by-pair form (molecules); both compute the
#: same sums (``native.c``). Measured on a 2-core AMD EPYC: the row form is 1.4x faster on the
#: 12 x 12 grids of ``PLSTM2D`` (about 42 pairs per node) and no faster on molecules (7).
DENSE_ROWS = 16
_lock = threading.Lock()
_libs: dict[torch.dtype, ctypes.CDLL] = {}
_failure: str | None = None


def _cache_dir() -> Path:
    env = os.environ.get("GRAPHSEQ_CACHE_DIR")
    if env:
        return Path(env)
    xdg = os.environ.get("XDG_CACHE_HOME")
    home = Path(xdg) if xdg else Path.home() / ".cache"
    return home / "graphseq"


def _cpu_id() -> str:
    """The CPU model and its instruction-set flags (the build uses ``-march=native``: a
    library built on one CPU must not be loaded on another from a shared home folder)."""
    lines = []
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(("model name", "flags", "Features")) and line not in lines:
                    lines.append(line)
                if not line.strip() and lines:  # the first processor's block is enough
                    break
    except OSError:
        pass
    return "".join(lines) or platform.processor() or platform.machine()


def _compiler_id(cc: list[str]) -> str:
    """``cc --version`` (part of the cache key: a compiler upgrade rebuilds)."""
    try:
        run = subprocess.run([*cc, "--version"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as err:
        raise OSError(f"{' '.join(cc)}: {err}") from None  # no compiler
    return run.stdout


def _load(lib: Path) -> ctypes.CDLL | None:
    """The cached library ``lib``; ``None`` (and the file removed, to be rebuilt) if it is
    there but cannot be loaded (truncated, or from another machine)."""
    if not lib.exists():
        return None
    try:
        return ctypes.CDLL(str(lib))
    except OSError:
        lib.unlink(missing_ok=True)
        return None


def _private(folder: Path) -> bool:
    """Whether ``folder`` (in the shared temporary folder) is this user's alone: owned by this
    user and never writable by anyone else (then closed to others). A library loaded from a
    folder that someone else owns or may write to runs their code (the file names are
    predictable: a hash of the source, the flags, ``cc --version`` and the CPU)."""
    st = folder.stat()
    if hasattr(os, "getuid") and st.st_uid != os.getuid():
        return False
    if st.st_mode & 0o022:  # others could already have written into it: never trusted
        return False
    if st.st_mode & 0o077:
        try:
            os.chmod(folder, 0o700)
        except OSError:
            return False
    return True


def _writable_folder() -> Path:
    user = os.getuid() if hasattr(os, "getuid") else os.environ.get("USERNAME", "user")
    shared = Path(tempfile.gettempdir()) / f"graphseq-{user}"
    for folder in (_cache_dir(), shared):
        try:
            folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError:
            continue
        if folder == shared and not _private(folder):
            continue
        if os.access(folder, os.W_OK):
            return folder
    raise OSError(
        f"no writable cache folder of this user's own ({_cache_dir()} cannot be made, {shared}"
        " is someone else's or writable by others): set GRAPHSEQ_CACHE_DIR"
    )


def _compile(real: str) -> ctypes.CDLL:
    """Build (or find in the cache) the library for ``real`` (``float``/``double``): the
    first of the flag sets that compiles (no ``-march=native``, no OpenMP as fallbacks)."""
    # $CC may carry arguments ("ccache cc", "cc -m64"), as make and setuptools allow
    cc = shlex.split(os.environ.get("CC") or "cc")
    source = _SOURCE.read_bytes()
    machine = (_compiler_id(cc) + _cpu_id()).encode()
    folder = _writable_folder()
    errors = []
    for flags in (
        ["-O3", "-march=native", "-fopenmp"],
        ["-O3", "-fopenmp"],
        ["-O3", "-fopenmp-simd"],
        ["-O3"],
    ):
        flags = [*flags, *_REASSOCIATE, "-std=c11", "-fPIC", "-shared", f"-DREAL={real}"]
        key = hashlib.sha256(
            b"\0".join([source, " ".join([*cc, *flags]).encode(), machine])
        ).hexdigest()[:20]
        lib = folder / f"dag_attention_{real}_{key}.so"
        cached = _load(lib)
        if cached is not None:
            return cached
        fd, tmp = tempfile.mkstemp(suffix=".so", dir=folder)
        os.close(fd)
        try:
            run = subprocess.run(
                [*cc, *flags, str(_SOURCE), "-o", tmp, "-lm"],
                capture_output=True,
                text=True,
                timeout=120,
            )
        except (OSError, subprocess.TimeoutExpired) as err:
            os.unlink(tmp)
            raise OSError(f"{' '.join(cc)}: {err}") from None  # no compiler: no flags help
        if run.returncode != 0:
            os.unlink(tmp)
            errors.append(f"{' '.join([*cc, *flags])}: {run.stderr.strip()[-300:]}")
            continue
        os.replace(tmp, lib)  # atomic: a concurrent build of the same key is identical
        return ctypes.CDLL(str(lib))
    raise OSError("; ".join(errors))


def _signature(lib: ctypes.CDLL) -> None:
    i64, ptr = ctypes.c_int64, ctypes.c_void_p
    plan = [i64] + [ptr] * 9
    common = [*plan, ptr, i64, i64, ctypes.c_double, ptr, ptr, ptr, ptr]
    lib.dag_attention_forward.argtypes = [*common, ptr, i64, ctypes.c_int]
    lib.dag_attention_forward.restype = i64
    lib.dag_attention_backward.argtypes = [*common, ptr, ptr, ptr, ptr, ptr, ptr, i64, ctypes.c_int]
    lib.dag_attention_backward.restype = i64


def _library(dtype: torch.dtype) -> ctypes.CDLL | None:
    """The compiled kernel for ``dtype`` (float32 or float64), building it on first call;
    ``None`` when it cannot be built (see :func:`unavailable_reason`)."""
    global _failure
    lib = _libs.get(dtype)
    if lib is not None or _failure is not None:
        return lib
    with _lock:
        if dtype in _libs or _failure is not None:
            return _libs.get(dtype)
        if os.environ.get("GRAPHSEQ_NATIVE", "1").lower() in ("0", "false", "no", "off"):
            _failure = "switched off by GRAPHSEQ_NATIVE=0"
            return None
        try:
            lib = _compile(_TYPES[dtype])
            _signature(lib)
        except OSError as err:
            _failure = f"could not build {_SOURCE.name}: {err}"
            return None
        _libs[dtype] = lib
        return lib


def available() -> bool:
    """Whether the native kernel can run here (built now if it was not yet)."""
    return _library(torch.float32) is not None and _library(torch.float64) is not None


def unavailable_reason() -> str | None:
    """Why :func:`available` is ``False`` (``None`` when it is not, or was not asked yet)."""
    return _failure


def _ptr(t: Tensor) -> ctypes.c_void_p:
    return ctypes.c_void_p(t.data_ptr())


def _plan_args(plan: DagAttentionPlan) -> list:
    return [
        plan.num_graphs,
        *(_ptr(getattr(plan, name)) for name in
          ("node_ptr", "node", "edge_ptr", "edge", "esrc", "edst", "lg_ptr", "lg_id", "lg_pred")),
    ]  # fmt: skip


def working_dtype(dtype: torch.dtype) -> torch.dtype:
    """float64 stays float64, every other float dtype runs in float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def _check_failed(failed: int) -> None:
    if failed:
        raise MemoryError(f"dag_attention: could not allocate the scratch of {failed} graph(s)")


def _forward(plan, scale, qkv, source, transition, mark, direct) -> Tensor:
    lib = _library(qkv.dtype)
    N, _, H, C = qkv.shape
    out = _output(qkv, (N, H, C), plan.node.numel() == N)
    failed = lib.dag_attention_forward(
        *_plan_args(plan), _ptr(qkv), H, C, float(scale),
        *(_ptr(t) for t in (source, transition, mark, direct)), _ptr(out), DENSE_ROWS,
        torch.get_num_threads(),
    )  # fmt: skip
    _check_failed(failed)
    return out


def _output(like: Tensor, shape, covered: bool) -> Tensor:
    """An output the kernel writes: uninitialised when the plan covers every one of its rows,
    else zero-filled (the rows of unplanned graphs stay zero)."""
    return like.new_empty(shape) if covered else like.new_zeros(shape)


class _DagAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, plan, scale, qkv, source, transition, mark, direct):
        ctx.plan, ctx.scale = plan, scale
        ctx.save_for_backward(qkv, source, transition, mark, direct)
        return _forward(plan, scale, qkv, source, transition, mark, direct)

    @staticmethod
    @first_order_only("dag_attention (native backend)", "backend='reference' records a graph")
    def backward(ctx, dh):
        qkv, source, transition, mark, direct = ctx.saved_tensors
        lib = _library(qkv.dtype)
        N, _, H, C = qkv.shape
        dh = dh.to(qkv.dtype).contiguous()
        p = ctx.plan
        covered = (p.node.numel() == N, p.edge.numel() == p.num_edges, p.lg_id.numel() == p.num_lg)
        grads = [
            _output(t, t.shape, full)
            for t, full in zip(
                (qkv, source, transition, mark, direct), (*covered, covered[1], covered[0])
            )
        ]
        dqkv, dsource, dtransition, dmark, ddirect = grads
        failed = lib.dag_attention_backward(
            *_plan_args(ctx.plan), _ptr(qkv), H, C, float(ctx.scale),
            *(_ptr(t) for t in (source, transition, mark, direct)), _ptr(dh),
            *(_ptr(t) for t in (dqkv, dsource, dtransition, dmark, ddirect)), DENSE_ROWS,
            torch.get_num_threads(),
        )  # fmt: skip
        _check_failed(failed)
        return None, None, dqkv, dsource, dtransition, dmark, ddirect


def dag_attention(
    qkv: Tensor,
    source: Tensor,
    transition: Tensor,
    mark: Tensor,
    direct: Tensor,
    plan: DagAttentionPlan,
    scale: float = 1.0,
) -> Tensor:
    """The native kernel on checked CPU inputs (see the public op); computes in float32 (or
    float64 when any input is float64: gates are never narrowed below it) and returns that
    dtype. Raises ``RuntimeError`` when the kernel is unavailable."""
    widest = qkv.dtype
    for t in (source, transition, mark, direct):
        widest = torch.promote_types(widest, t.dtype)
    dtype = working_dtype(widest)
    if _library(dtype) is None:
        raise RuntimeError(f"dag_attention: the native kernel is unavailable ({_failure})")
    args = [t.to(dtype).contiguous() for t in (qkv, source, transition, mark, direct)]
    if torch.is_grad_enabled() and any(t.requires_grad for t in args):
        return _DagAttention.apply(plan, scale, *args)
    return _forward(plan, scale, *args)
