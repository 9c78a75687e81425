"""The demo and the command line, at a smoke size."""

from __future__ import annotations

import subprocess
import sys

import numpy as np

from eggroll_opt import _demo
from eggroll_opt.__main__ import main


def test_demo_runs_both_strategies_and_reports(capsys):
    code = _demo.main(["--hidden", "16", "--popsize", "32", "--generations", "3", "--quiet"])
    out = capsys.readouterr().out
    # It says what "solved" means and why the two rows differ.
    assert "Solved: the mean policy (no noise) averages >= 475" in out
    assert "Why the rows differ" in out and "only the noise differs" in out
    assert code == 0
    assert "| Eggroll | " in out and "| OpenES | " in out
    assert "peak memory (MB)" in out and "s / generation" in out


def test_cartpole_matches_the_reference_equations():
    """One step from a known state, against the CartPole-v1 equations written out by hand."""
    state = np.array([[0.01, -0.02, 0.03, 0.04]])
    x, x_dot, theta, theta_dot = state[0]
    force = 10.0
    temp = (force + 0.05 * theta_dot**2 * np.sin(theta)) / 1.1
    theta_acc = (9.8 * np.sin(theta) - np.cos(theta) * temp) / (
        0.5 * (4 / 3 - 0.1 * np.cos(theta) ** 2 / 1.1)
    )
    x_acc = temp - 0.05 * theta_acc * np.cos(theta) / 1.1
    expected = [
        x + 0.02 * x_dot,
        x_dot + 0.02 * x_acc,
        theta + 0.02 * theta_dot,
        theta_dot + 0.02 * theta_acc,
    ]
    np.testing.assert_allclose(_demo.cartpole_step(state, np.array([True]))[0], expected)


def test_an_untrained_policy_falls_and_a_balancing_one_survives():
    rng = np.random.default_rng(0)
    always_left = _demo.episode_returns(lambda obs: np.zeros(len(obs), bool), 5, rng)
    assert always_left.max() < 20
    # Push towards the side the pole leans to: a classic hand-written controller.
    balancing = _demo.episode_returns(lambda obs: obs[:, 2] + 0.5 * obs[:, 3] > 0, 5, rng)
    assert balancing.min() >= 100


def test_command_line_usage():
    assert main([]) == 2
    assert main(["--help"]) == 0
    assert main(["nope"]) == 2
    completed = subprocess.run(
        [sys.executable, "-m", "eggroll_opt", "demo", "--help"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "CartPole" in completed.stdout
