"""The MNIST CNN task of the peer benchmark: its pieces that run without the peers installed."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pytest

from benchmarks import peers, peers_mnist
from eggroll_opt import nn

MNIST = Path(__file__).resolve().parents[2] / "shared" / "data" / "mnist"


def test_reference_forward_matches_the_example_cnn():
    example = peers_mnist.load_example()
    params = example.init_cnn(0, peers_mnist.WIDTH)
    images = np.random.default_rng(0).standard_normal((16, 1, 28, 28)).astype(np.float32)
    expected = example.cnn(nn.ParamsLayers(params), images)
    np.testing.assert_allclose(
        peers_mnist.reference_logits(params, images), expected, rtol=1e-4, atol=1e-4
    )


def test_reference_loss_is_the_mean_cross_entropy():
    params = peers_mnist.initial_params()
    images = np.random.default_rng(1).standard_normal((8, 1, 28, 28)).astype(np.float32)
    labels = np.arange(8) % 10
    logits = peers_mnist.reference_logits(params, images)
    log_probs = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
    loss, accuracy = peers_mnist.reference_loss(params, images, labels)
    assert loss == pytest.approx(-log_probs[np.arange(8), labels].mean())
    assert accuracy == np.mean(logits.argmax(axis=1) == labels)


def test_layout_round_trips_the_example_parameters():
    params = peers_mnist.initial_params()
    assert peers_mnist.PARAMS == sum(
        leaf.size for layer in params.values() for leaf in layer.values()
    )
    flat = peers_mnist.flat_from_tree(params)
    assert flat.shape == (peers_mnist.PARAMS,) and flat.dtype == np.float32
    back = peers_mnist.tree_from_flat(flat)
    for layer, leaves in params.items():
        for leaf, value in leaves.items():
            np.testing.assert_array_equal(back[layer][leaf], value)


def test_batches_are_seeded_and_distinct_within_a_generation():
    first = peers_mnist.batch_indices(5, 60000, 128)
    assert first.shape == (5, 128)
    np.testing.assert_array_equal(first, peers_mnist.batch_indices(5, 60000, 128))
    assert all(len(set(row)) == 128 for row in first)


def test_plan_follows_the_example_defaults():
    full, quick = peers_mnist.plan(False, "/data"), peers_mnist.plan(True, "/data")
    defaults = peers_mnist.load_example().command_line().parse_args([])
    assert (full["popsize"], full["batch"]) == (defaults.popsize, defaults.batch)
    assert (full["sigma"], full["learning_rate"]) == (defaults.sigma, defaults.learning_rate)
    assert (full["chunk"], peers_mnist.WIDTH) == (defaults.chunk, defaults.width)
    assert full["floor_images"] == full["popsize"] * full["batch"]
    assert quick["popsize"] < full["popsize"] and quick["mnist_dir"] == "/data"
    assert full["task"] == "mnist-cnn" and full["params"] == 52138


def test_thread_variables_and_the_threads_option():
    one, two = peers.thread_env(1), peers.thread_env(2)
    assert one["OMP_NUM_THREADS"] == one["OPENBLAS_NUM_THREADS"] == one["MKL_NUM_THREADS"] == "1"
    assert one["XLA_FLAGS"] == peers.XLA_ONE_THREAD
    assert (
        two["OPENBLAS_NUM_THREADS"] == "2" and "intra_op_parallelism_threads=2" in two["XLA_FLAGS"]
    )
    assert peers.parse_threads("1,2") == [1, 2]
    for bad in ("", "0", "one"):
        with pytest.raises(argparse.ArgumentTypeError):
            peers.parse_threads(bad)


def test_missing_data_gives_skipped_rows_and_a_report(tmp_path, capsys):
    rows = peers.section_peers(True, "mnist-cnn", [1], str(tmp_path))
    assert [row["row"] for row in rows] == list(peers_mnist.ROWS)
    assert all("skipped" in row and row["thread_count"] == 1 for row in rows)
    assert any("MNIST not found" in row["skipped"] for row in rows)
    text = peers.markdown_peers(rows)
    assert "## MNIST CNN" in text and "skipped:" in text
    assert "skipped" in capsys.readouterr().out
    with pytest.raises(ValueError, match="unknown task"):
        peers.section_peers(True, "cifar")


def _measured(name: str, threads: int, seconds: float, loss: float | None) -> dict:
    return {
        "task": "mnist-cnn",
        "row": name,
        "library": peers_mnist.ROWS[name]["library"],
        "thread_count": threads,
        "popsize": 256,
        "params": peers_mnist.PARAMS,
        "held_out": 2000,
        "loss_generations": 20,
        "warmup_generations": 2,
        "timed_generations": 18,
        "version": "1",
        "method": "m",
        "settings": "s",
        "seconds_per_generation": {"median": seconds, "min": seconds, "max": seconds},
        "cpu_per_wall": 1.0,
        "compile_seconds": None,
        "rss_after_setup_bytes": 100 * peers.MB,
        "peak_rss_bytes": 200 * peers.MB,
        "rss_increase_bytes": 100 * peers.MB,
        "initial_loss": 2.5,
        "initial_accuracy": 0.1,
        "loss": loss,
        "accuracy": None if loss is None else 0.5,
        "versions": {"x": "1"},
        "threads": {"env": {"OMP_NUM_THREADS": str(threads)}, "threadpools": []},
        "load_average": {"before": 1.0, "after": 1.0},
    }


def test_report_gives_ratios_at_the_same_thread_count():
    rows = [
        _measured("eggroll_opt/Eggroll", 1, 0.5, 1.5),
        _measured("evosax/Open_ES", 1, 2.0, 1.6),
        _measured("floor/torch", 1, 0.25, None),
        _measured("eggroll_opt/Eggroll", 2, 0.25, 1.5),
        _measured("evosax/Open_ES", 2, 2.5, 1.6),
    ]
    text = peers_mnist.markdown(rows)
    assert "| evosax/Open_ES | 1 | 4.00x | 8.0x (floor/torch) | 1.0x |" in text
    assert "| evosax/Open_ES | 2 | 10.00x | - | 1.0x |" in text
    assert "2.5000 (no training)" in text and "2.5000 -> 1.5000" in text
    assert "OMP_NUM_THREADS=1" in text
    assert peers.markdown_peers(rows) == text  # MNIST rows alone: that section alone


@pytest.mark.skipif(not MNIST.is_dir(), reason="the shared MNIST copy is not beside the repository")
def test_eggroll_worker_learns_on_real_mnist():
    config = peers_mnist.plan(True, str(MNIST)) | {
        "popsize": 16,
        "warmup": 0,
        "timed": 3,
        "held_out": 200,
        "floor_images": 256,
    }
    row = peers.run_worker("eggroll_opt/Eggroll", config)
    assert row["loss"] < row["initial_loss"]
    assert len(row["generation_seconds"]) == 3 and row["versions"]["eggroll_opt"] != "not installed"
    floor = peers.run_worker("floor/eggroll_opt", config)
    assert floor["loss"] is None and floor["chunk"] in peers_mnist.FLOOR_CHUNKS["ours"]
