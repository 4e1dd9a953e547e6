"""Argument checks shared by the generators (errors name the function and the argument)."""

from __future__ import annotations

import numpy as np


def check_seed(fn: str, seed: object, name: str = "seed", *, allow_negative: bool = False) -> None:
    """Raise ``TypeError`` unless ``seed`` is an int (not a bool), ``ValueError`` if it is
    negative and ``allow_negative`` is false (numpy's generators refuse negative seeds)."""
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise TypeError(f"{fn}: {name} must be an int, got {type(seed).__name__}")
    if seed < 0 and not allow_negative:
        raise ValueError(f"{fn}: {name} must be >= 0, got {seed}")


def load_npz(fn: str, path, keys) -> dict[str, np.ndarray]:
    """The arrays ``keys`` of the ``.npz`` archive ``path`` (no pickled objects). A file that is
    not such an archive (truncated, another format, object arrays) or lacks a key raises
    ``ValueError`` naming ``fn`` and the file, not numpy's message about pickles."""
    import zipfile

    keys = list(keys)
    try:
        with np.load(path, allow_pickle=False) as f:
            missing = [k for k in keys if k not in f.files]
            if missing:
                raise ValueError(f"{fn}: {path} lacks the arrays {missing}")
            return {k: f[k] for k in keys}
    except (zipfile.BadZipFile, EOFError, OSError) as err:
        raise ValueError(f"{fn}: cannot read {path} as an .npz archive ({err})") from err
    except ValueError as err:
        if str(err).startswith(f"{fn}: "):
            raise
        raise ValueError(
            f"{fn}: cannot read {path} as an .npz archive of plain arrays (a damaged or "
            f"different file, or object arrays; numpy: {err})"
        ) from err
