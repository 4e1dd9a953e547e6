"""examples/pattern.py end to end on a tiny budget: models split over two invocations, then the
combined table from the finished seeds (read back, not retrained), with the cosine schedule."""

from __future__ import annotations

import json

import pytest


def test_pattern_example_split_then_summary(tmp_path, capsys, load_example):
    mod = load_example("pattern")
    out = tmp_path / "pattern"
    base = ["--sizes", "6", "3", "3", "--epochs", "3", "--warmup", "1", "--seeds", "0",
            "--gps-hidden", "32", "--gps-layers", "2", "--gsm-layers", "1",
            "--out", str(out)]  # fmt: skip
    mod.main([*base, "--models", "gps"])
    assert json.loads((out / "summary_gps.json").read_text()).keys() == {"gps"}
    gps = json.loads((out / "gps" / "seed0" / "results.json").read_text())
    assert gps["config"]["schedule"] == "cosine" and gps["config"]["warmup_epochs"] == 1
    assert gps["epochs_run"] == 3
    mod.main([*base, "--models", "gsm++"])
    first = (out / "gps" / "seed0" / "results.json").stat().st_mtime_ns
    capsys.readouterr()
    mod.main(base)  # both models: finished seeds are read back
    assert (out / "gps" / "seed0" / "results.json").stat().st_mtime_ns == first
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary) == {"gsm++", "gps"}
    ratio = summary["gsm++"]["params"] / summary["gps"]["params"]
    assert 0.9 <= ratio <= 1.1  # equal parameter count, as the bar asks
    for s in summary.values():
        assert len(s["scores"]) == 1 and 0.0 <= s["mean"] <= 100.0 and s["std"] == 0.0
    printed = capsys.readouterr().out
    assert "GSM++ - GPS = " in printed and "| gps |" in printed


def test_pattern_example_gsm_local_layers(tmp_path, capsys, load_example):
    mod = load_example("pattern")
    out = tmp_path / "pattern"
    base = ["--sizes", "6", "3", "3", "--epochs", "1", "--warmup", "0", "--seeds", "0",
            "--gps-hidden", "32", "--gps-layers", "2", "--gsm-layers", "1",
            "--models", "gsm++"]  # fmt: skip
    mod.main([*base, "--out", str(out)])  # the default: two GatedGCN layers per block
    gsm = json.loads((out / "summary_gsm++.json").read_text())["gsm++"]
    assert gsm["model_args"]["local_layers"] == 2
    run = json.loads((out / "gsm++" / "seed0" / "results.json").read_text())
    assert run["config"]["model_args"]["local_layers"] == 2
    # one GatedGCN layer per block keeps the eighth session's model arguments
    mod.main([*base, "--gsm-local-layers", "1", "--out", str(tmp_path)])
    for flag, value in (
        ("--gsm-local-layers", "0"),
        ("--gsm-layers", "-1"),
        ("--gsm-global-hidden", "0"),
    ):
        with pytest.raises(SystemExit):
            mod.main([*base, flag, value, "--out", str(tmp_path)])
        assert f"{flag} must be >= 1" in capsys.readouterr().err
    assert (
        "local_layers"
        not in json.loads((tmp_path / "summary_gsm++.json").read_text())["gsm++"]["model_args"]
    )


def test_pattern_example_gsm_pe(tmp_path, load_example):
    """--gsm-pe gives GSM++ the random-walk PE that GPS reads (and --gsm-norm-sum GPSConv's
    local form); without them the model arguments (and so the recorded runs' digests) are
    unchanged."""
    mod = load_example("pattern")
    base = ["--sizes", "6", "3", "3", "--epochs", "1", "--warmup", "0", "--seeds", "0",
            "--gps-hidden", "32", "--gps-layers", "2", "--gsm-layers", "1",
            "--models", "gsm++"]  # fmt: skip
    mod.main([*base, "--gsm-pe", "--out", str(tmp_path / "pe")])
    run = json.loads((tmp_path / "pe" / "gsm++" / "seed0" / "results.json").read_text())
    assert run["config"]["model_args"]["pe"] == "rw_pe"
    assert run["config"]["model_args"]["pe_dim"] == 8
    mod.main([*base, "--out", str(tmp_path / "plain")])
    plain = json.loads((tmp_path / "plain" / "gsm++" / "seed0" / "results.json").read_text())
    assert "pe" not in plain["config"]["model_args"]
    assert "global_hidden" not in plain["config"]["model_args"]
    assert "local_norm_sum" not in plain["config"]["model_args"]
    mod.main([*base, "--gsm-norm-sum", "--out", str(tmp_path / "ns")])
    ns = json.loads((tmp_path / "ns" / "gsm++" / "seed0" / "results.json").read_text())
    assert ns["config"]["model_args"]["local_norm_sum"] is True
    # the same parameters (BatchNorm's affine map either way): the same width
    assert ns["config"]["model_args"]["hidden"] == plain["config"]["model_args"]["hidden"]
    mod.main([*base, "--gsm-global-hidden", "4", "--out", str(tmp_path / "narrow")])
    narrow = json.loads((tmp_path / "narrow" / "gsm++" / "seed0" / "results.json").read_text())
    assert narrow["config"]["model_args"]["global_hidden"] == 4
    # narrower scan encoders leave parameters for a wider block at the same budget
    assert narrow["config"]["model_args"]["hidden"] > plain["config"]["model_args"]["hidden"]


def test_pattern_example_gsm_hac_on_pe(tmp_path, load_example):
    """--gsm-hac-pe clusters on [x, rw_pe]: a different HAC tree, recorded as different data."""
    mod = load_example("pattern")
    base = ["--sizes", "6", "3", "3", "--epochs", "1", "--warmup", "0", "--seeds", "0",
            "--gps-hidden", "32", "--gps-layers", "2", "--gsm-layers", "1"]  # fmt: skip
    mod.main([*base, "--gsm-hac-pe", "--out", str(tmp_path)])
    gsm = json.loads((tmp_path / "gsm++" / "seed0" / "results.json").read_text())
    gps = json.loads((tmp_path / "gps" / "seed0" / "results.json").read_text())
    assert gsm["config"]["benchmark"] == "pattern-small+hac(x,rw_pe)"
    assert gps["config"]["benchmark"] == "pattern-small"  # GPS reads no HAC attribute


def test_pattern_example_refuses_bad_flags_before_generating(tmp_path, capsys, load_example,
                                                              monkeypatch):  # fmt: skip
    """An empty valid/test split used to train an epoch and die in argmax; --lr and --gps-hidden
    were refused only after the graphs were generated; a repeated seed counted twice."""
    mod = load_example("pattern")
    monkeypatch.setattr(mod, "sbm_task", lambda *a, **k: pytest.fail("data generated"))
    base = ["--epochs", "1", "--warmup", "0", "--out", str(tmp_path)]
    for argv, flag in ((["--sizes", "6", "0", "3"], "--sizes"), (["--lr", "-1"], "--lr"),
                       (["--gps-hidden", "30"], "--gps-hidden"),
                       (["--seeds", "0", "0"], "--seeds")):  # fmt: skip
        with pytest.raises(SystemExit):
            mod.main([*base, *argv])
        assert f"error: {flag} must" in capsys.readouterr().err


def test_pattern_example_summary_records_the_run(tmp_path, load_example):
    mod = load_example("pattern")
    argv = ["--sizes", "6", "3", "3", "--epochs", "1", "--warmup", "0", "--seeds", "0",
            "--gps-hidden", "32", "--gps-layers", "2", "--gsm-layers", "1", "--models", "gps",
            "--out", str(tmp_path)]  # fmt: skip
    mod.main(argv)
    gps = json.loads((tmp_path / "summary_gps.json").read_text())["gps"]
    assert gps["args"]["sizes"] == [6, 3, 3] and "--sizes" in gps["command"]
    assert gps["machine"]["torch"]


def test_pattern_example_gps_alone_needs_no_matching_gsm(tmp_path, capsys, load_example):
    """--models gps used to stop before training GPS when no GSM++ width fitted GPS's
    parameter count, though no GSM++ was to run; with GSM++ the refusal stays."""
    mod = load_example("pattern")
    base = ["--sizes", "4", "2", "2", "--epochs", "1", "--warmup", "0", "--seeds", "0",
            "--gps-hidden", "16", "--gps-layers", "1", "--out", str(tmp_path)]  # fmt: skip
    mod.main([*base, "--models", "gps"])
    assert (tmp_path / "gps" / "seed0" / "results.json").exists()
    with pytest.raises(SystemExit, match="no GSM\\+\\+ width"):
        mod.main([*base, "--models", "gsm++"])
