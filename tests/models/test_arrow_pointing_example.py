"""examples/arrow_pointing.py on a tiny budget: runs of one model each merge into one PNG, and
runs of different settings are refused."""

from __future__ import annotations

import json

import pytest

TINY = ["--train-size", "8", "--test-size", "4", "--epochs", "1", "--batch-size", "4"]
TINY += ["--train-resolution", "96", "--dim", "8", "--heads", "2", "--vit-heads", "2"]


def test_runs_of_one_model_each_merge(tmp_path, load_example, capsys):
    mod = load_example("arrow_pointing")
    a, b = tmp_path / "plstm", tmp_path / "vit"
    argv = [*TINY, "--test-resolutions", "96", "112"]
    mod.main([*argv, "--models", "plstm", "--seeds", "0", "--out", str(a)])
    mod.main([*argv, "--models", "vit", "--seeds", "1", "--out", str(b)])
    assert (a / "arrow_pointing.png").stat().st_size > 1000  # one model alone is plotted too
    merged = tmp_path / "merged"
    files = [str(a / "arrow_pointing.json"), str(b / "arrow_pointing.json")]
    mod.main(["--merge", *files, "--out", str(merged)])
    data = json.loads((merged / "arrow_pointing.json").read_text())
    assert [sorted(k for k in r if k != "seed") for r in data["results"]] == [["plstm"], ["vit"]]
    assert (merged / "arrow_pointing.png").stat().st_size > 1000
    # other test resolutions are another setting: named, not a KeyError
    c = tmp_path / "other"
    mod.main([*TINY, "--test-resolutions", "96", "--models", "plstm", "--seeds", "2",
              "--out", str(c)])  # fmt: skip
    capsys.readouterr()
    with pytest.raises(SystemExit):
        mod.main(["--merge", files[0], str(c / "arrow_pointing.json"), "--out", str(merged)])
    err = capsys.readouterr().err
    assert "differs" in err and "test_resolutions" in err


@pytest.mark.parametrize("flag", ["--test-size", "--train-size", "--batch-size", "--epochs"])
def test_sizes_below_one_are_argparse_errors(flag, tmp_path, load_example, capsys):
    """--test-size 0 used to report an accuracy of 0 over no images."""
    with pytest.raises(SystemExit):
        load_example("arrow_pointing").main([flag, "0", "--out", str(tmp_path)])
    assert f"{flag} must be >= 1" in capsys.readouterr().err


def test_plot_marks_the_train_resolution(tmp_path, load_example):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    mod = load_example("arrow_pointing")
    results = [{"vit": {"accuracy": {"144": 0.6, "192": 0.55}}}]
    mod.plot(tmp_path / "a.png", results, [144, 192], 96)
    # the figure is closed after saving; re-draw to read the line back
    seen = []
    real = plt.Axes.axvline

    def spy(self, x, *a, **k):
        seen.append(x)
        return real(self, x, *a, **k)

    plt.Axes.axvline = spy
    try:
        mod.plot(tmp_path / "b.png", results, [144, 192], 96)
    finally:
        plt.Axes.axvline = real
    assert seen == [96] and (tmp_path / "a.png").exists()


def test_device_flag(tmp_path, load_example, capsys):
    """--device picks where the models train (auto: CUDA when present); an unavailable or
    malformed device is an argparse error before any data is generated."""
    mod = load_example("arrow_pointing")
    out = tmp_path / "cpu"
    mod.main([*TINY, "--test-resolutions", "96", "--models", "vit", "--seeds", "0",
              "--device", "cpu", "--out", str(out)])  # fmt: skip
    assert json.loads((out / "arrow_pointing.json").read_text())["device"] == "cpu"
    import torch

    bad = ["--device", "gpu0"] if torch.cuda.is_available() else ["--device", "cuda"]
    with pytest.raises(SystemExit):
        mod.main([*TINY, *bad, "--out", str(tmp_path / "bad")])
    assert "--device" in capsys.readouterr().err


def test_a_merged_file_merges_again(tmp_path, load_example, capsys):
    """A merged file fed back to --merge raised a bare KeyError('args')."""
    mod = load_example("arrow_pointing")
    argv = [*TINY, "--test-resolutions", "96", "--models", "vit"]
    for s in (0, 1, 2):
        mod.main([*argv, "--seeds", str(s), "--out", str(tmp_path / f"s{s}")])
    first = tmp_path / "m01"
    mod.main(["--merge", str(tmp_path / "s0/arrow_pointing.json"),
              str(tmp_path / "s1/arrow_pointing.json"), "--out", str(first)])  # fmt: skip
    again = tmp_path / "m012"
    mod.main(["--merge", str(first / "arrow_pointing.json"),
              str(tmp_path / "s2/arrow_pointing.json"), "--out", str(again)])  # fmt: skip
    data = json.loads((again / "arrow_pointing.json").read_text())
    assert [r["seed"] for r in data["results"]] == [0, 1, 2] and len(data["runs"]) == 3
    (tmp_path / "other.json").write_text("{}")
    capsys.readouterr()
    with pytest.raises(SystemExit):
        mod.main(["--merge", str(tmp_path / "other.json"), "--out", str(tmp_path / "x")])
    assert "not a results file" in capsys.readouterr().err


def test_a_run_is_merged_once(tmp_path, load_example, capsys):
    """The same file given twice was accepted and its seed weighted twice in the mean."""
    mod = load_example("arrow_pointing")
    out = tmp_path / "s0"
    mod.main([*TINY, "--test-resolutions", "96", "--models", "vit", "--seeds", "0",
              "--out", str(out)])  # fmt: skip
    f = str(out / "arrow_pointing.json")
    capsys.readouterr()
    with pytest.raises(SystemExit):
        mod.main(["--merge", f, f, "--out", str(tmp_path / "m")])
    assert "seed 0 of vit is in the files more than once" in capsys.readouterr().err
    assert not (tmp_path / "m" / "arrow_pointing.json").exists()
