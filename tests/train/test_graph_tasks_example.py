"""examples/graph_tasks.py end to end on a tiny budget: every row runs, the summary holds
means, spreads, parameter counts and the ordering checks, and a rerun reads the cells back."""

from __future__ import annotations

import json


def test_graph_tasks_example_summary(tmp_path, capsys, load_example):
    mod = load_example("graph_tasks")
    out = tmp_path / "grid"
    argv = ["--tasks", "colour_counting", "--tokenizations", "none", "random", "--backbones",
            "ssm", "transformer", "--sizes", "12", "6", "6", "--epochs", "1", "--seeds", "0",
            "1", "--hidden", "8", "--gsmpp-hidden", "8", "--out", str(out)]  # fmt: skip
    mod.main(argv)
    summary = json.loads((out / "summary.json").read_text())
    labels = {"gin", "gsm++", "ssm/none", "transformer/none", "ssm/random", "transformer/random"}
    cells = summary["cells"]["colour_counting"]
    assert set(cells) == labels and all(0 <= v <= 1 for v in cells.values())
    assert set(summary["std"]["colour_counting"]) == labels
    assert all(v is not None for v in summary["std"]["colour_counting"].values())  # 2 seeds
    params = summary["parameters"]["colour_counting"]
    assert params["ssm/random"] > params["ssm/none"]  # the PE's linear map
    assert any("colour counting w/o PE" in line for line in summary["checks"])
    assert "--hidden" in summary["command"] and summary["machine"]["torch"]
    printed = capsys.readouterr().out
    assert "| GSM++" in printed and "| GIN (MPNN anchor) |" in printed and "±" in printed
    # one seed: no spread is printed or stored; finished cells are read back, not retrained
    first = (out / "colour_counting" / "gin" / "seed0" / "results.json").stat().st_mtime_ns
    mod.main([*argv[: argv.index("--seeds")], "--seeds", "0", *argv[argv.index("--hidden") :]])
    summary = json.loads((out / "summary.json").read_text())
    assert all(v is None for v in summary["std"]["colour_counting"].values())
    assert (out / "colour_counting" / "gin" / "seed0" / "results.json").stat().st_mtime_ns == first


def test_graph_tasks_example_rejects_bad_names_and_sizes(load_example, capsys):
    import pytest

    mod = load_example("graph_tasks")
    for argv, msg in (
        (["--tokenizations", "hacdfs"], "invalid choice: 'hacdfs'"),
        (["--backbones", "mamba"], "invalid choice: 'mamba'"),
        (["--sizes", "0", "1", "1"], "--sizes must all be >= 1"),
        (["--gsmpp-hidden", "0"], "--gsmpp-hidden must be >= 1"),  # after GIN trained, before
        (["--seeds", "0", "0"], "--seeds must be distinct"),  # one run counted as two seeds
    ):
        with pytest.raises(SystemExit):
            mod.main(argv)
        assert msg in capsys.readouterr().err


def test_graph_tasks_reduced_grid_shows_every_cell_it_trains(tmp_path, capsys, load_example):
    """--grid reduced overrides --backbones for what it trains, but the tables and the
    ordering checks used to read --backbones: with --backbones ssm the hybrid and transformer
    cells were trained, printed as '-' and their checks dropped."""
    mod = load_example("graph_tasks")
    trained = []

    def fake_fit(task, config, folder):
        trained.append(folder)
        return {"best": {"test": 0.5}, "num_parameters": 1}

    mod.fit = fake_fit
    mod.graph_tasks_task = lambda name, sizes, seed: type(
        "T", (), {"name": name, "higher_is_better": True, "metric": "acc"}
    )()
    mod.main(["--grid", "reduced", "--backbones", "ssm", "--seeds", "0", "--no-gin",
              "--no-gsmpp", "--out", str(tmp_path)])  # fmt: skip
    printed = capsys.readouterr().out
    assert len(trained) == sum(len(v) for v in mod.REDUCED.values())
    node_degree = printed.split("### node_degree")[1].split("###")[0]
    assert "| tokenization | transformer | ssm | hybrid |" in node_degree
    assert "| khop | - | - | 0.500 |" in node_degree
    assert "node degree, hybrid: khop tokens" in printed
