"""The curated public API of graphseq.nn and graphseq.datasets."""

import graphseq.datasets
import graphseq.nn


def test_nn_exports_are_locked():
    expected = {
        "GSM",
        "GSMPlusPlus",
        "HACTokenizer",
        "HierarchicalPE",
        "KHopTokenizer",
        "MoTRouter",
        "NodeTokenizer",
        "RandomWalkTokenizer",
        "Aaren",
        "GatedLinearRNN",
        "LCMAggregation",
        "PLSTM1D",
        "PLSTM2D",
        "PLSTMGraph",
        "PLSTMVision",
        "ParallelGRU",
        "RecurrentAggregation",
        "aggregation_resolver",
        "sequence_layer",
    }
    assert set(graphseq.nn.__all__) == expected
    for name in expected:
        assert hasattr(graphseq.nn, name)


def test_datasets_exports_are_locked():
    expected = {"StateTrackingDataset", "modular_counting", "parity"}
    assert set(graphseq.datasets.__all__) == expected
    for name in expected:
        assert hasattr(graphseq.datasets, name)
