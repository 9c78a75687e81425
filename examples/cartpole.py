"""Evolve a CartPole-v1 policy with EGGROLL on Gymnasium's NumPy-vectorised environment.

The policy is an MLP 4 -> H -> 2 (tanh, float32; the action is the arg-max of the two outputs)
whose weight matrices get rank-r EGGROLL noise and whose biases get dense noise. Every
generation steps one environment per population member, all members together, in
``gymnasium.make_vec("CartPole-v1", num_envs=popsize, vectorization_mode="vector_entry_point")``
(one NumPy array operation per step, no Python loop over environments), and computes all
members' actions in one call through ``nn.PopulationLayers`` on per-member observations of
shape (popsize, 1, 4).

Fitness is the return of each member's FIRST episode. The vector environment resets a finished
environment on the step after ``terminated | truncated`` (Gymnasium 1.x next-step autoreset);
those reset steps and everything after them are never counted, and a generation stops stepping
as soon as every member's first episode has ended.

Counting. ``env steps`` counts the steps of live members only, i.e. the sum of the lengths of
the members' first episodes (equal to the sum of their returns, since CartPole pays 1 per
step); the vector environment also advances the finished members' environments until the
generation ends, which is not counted. Steps played by the mean-policy checks (below) are
reported separately.

Threshold. After every generation the mean policy (``es.params``, no noise) plays
``--check-episodes`` fresh episodes (new seeds); training counts as having reached Gymnasium's
reward threshold (475) at the first generation whose check averages >= 475. The env steps and
wall time reported for it are the training steps up to and including that generation and the
wall time since the start of training, checks included. Training runs the whole budget
(``--generations``) unless ``--stop`` ends it at that generation. After training the mean
policy plays 100 more fresh episodes (``--eval-episodes``) with seeds never used before; their
mean ± std is the final result.

Published reference (not measured here): the RL Baselines3 Zoo benchmark table lists PPO on
CartPole-v1 at a mean reward of 500.000 ± 0.000 over 300 evaluation episodes after training for
100k timesteps (and ARS, a random-search method, at 500.000 after 50k),
https://github.com/DLR-RM/rl-baselines3-zoo/blob/master/benchmark.md ; those are the training
budgets of single tuned runs, not the step at which they first reached 475.

Run ``python examples/cartpole.py --help`` for the options; ``--quick`` is a few seconds.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import numpy as np
from _common import STRATEGIES, markdown_table, plot_curves, progress, strategy_class

import eggroll_opt as eo
from eggroll_opt import nn

THRESHOLD = 475.0  # Gymnasium's reward threshold for CartPole-v1
PUBLISHED = {
    "method": "PPO, RL Baselines3 Zoo (published, not measured here)",
    "env steps": "100k (training budget)",
    "final return (episodes)": "500.0 ± 0.0 (300)",
    "source": "github.com/DLR-RM/rl-baselines3-zoo/blob/master/benchmark.md",
}


def make_env(num_envs: int) -> Any:
    """Gymnasium's NumPy-vectorised CartPole-v1 with ``num_envs`` environments."""
    import gymnasium

    return gymnasium.make_vec(
        "CartPole-v1", num_envs=num_envs, vectorization_mode="vector_entry_point"
    )


def init_policy(hidden: int, seed: int) -> dict[str, Any]:
    """Float32 parameters of the MLP 4 -> hidden -> 2 (a zero output layer: always push left)."""
    rng = np.random.default_rng(seed)
    weight = rng.standard_normal((hidden, 4)) / 2.0
    return {
        "hidden": {"w": weight.astype(np.float32), "b": np.zeros(hidden, np.float32)},
        "out": {"w": np.zeros((2, hidden), np.float32), "b": np.zeros(2, np.float32)},
    }


def policy(layers: Any, observations: Any) -> Any:
    """The model, written once for the population or for one parameter tree: two logits."""
    return layers.dense("out", nn.tanh(layers.dense("hidden", observations)))


def first_episode_returns(env: Any, act: Any, seed: int) -> tuple[np.ndarray, int]:
    """Return of every environment's first episode and the number of live steps played.

    ``act(observations (n, 4)) -> actions (n,)`` is called once per step for all environments.
    """
    observations, _ = env.reset(seed=seed)
    alive = np.ones(env.num_envs, dtype=bool)
    returns = np.zeros(env.num_envs)
    steps = 0
    while alive.any():
        observations, rewards, terminated, truncated, _ = env.step(act(observations))
        returns += np.where(alive, rewards, 0.0)
        steps += int(alive.sum())
        alive &= ~(terminated | truncated)  # after this the env autoresets: never counted
    return returns, steps


def mean_policy_returns(params: dict[str, Any], env: Any, seed: int) -> tuple[np.ndarray, int]:
    """First-episode returns of the mean policy in every environment of ``env``."""
    layers = nn.ParamsLayers(eo.to_numpy(params))
    return first_episode_returns(env, lambda obs: policy(layers, obs).argmax(-1), seed)


def train(
    strategy: str,
    *,
    hidden: int,
    popsize: int,
    generations: int,
    sigma: float,
    learning_rate: float,
    rank: int,
    check_episodes: int,
    eval_episodes: int,
    stop: bool,
    seed: int,
    bar: bool = True,
) -> dict[str, Any]:
    """Evolve one policy; returns its curves, the threshold crossing and the final evaluation."""
    cls = strategy_class(strategy)
    es = cls(
        init_policy(hidden, seed),
        popsize=popsize,
        sigma=sigma,
        learning_rate=learning_rate,
        seed=seed,
        maximize=True,
        backend="numpy",
        rank=rank,  # OpenES applies it only to leaves set to "lowrank"
    )
    train_env, check_env = make_env(popsize), make_env(check_episodes)
    seeds = np.random.SeedSequence(seed).generate_state(2 * generations + 1)
    curve: dict[str, list[float]] = {
        key: [] for key in ("generation", "seconds", "env steps", "population", "mean")
    }
    env_steps = check_steps = 0
    solved: dict[str, Any] | None = None
    start = time.perf_counter()
    with progress(generations, strategy, enabled=bar) as progress_bar:
        for generation in range(generations):
            pop = es.ask()
            layers = nn.PopulationLayers(pop)

            def act(observations: np.ndarray, layers: Any = layers) -> np.ndarray:
                return policy(layers, observations[:, None, :])[:, 0].argmax(-1)

            returns, steps = first_episode_returns(train_env, act, int(seeds[2 * generation]))
            es.tell(returns)
            env_steps += steps
            check, steps = mean_policy_returns(es.params, check_env, int(seeds[2 * generation + 1]))
            check_steps += steps
            seconds = time.perf_counter() - start
            for key, value in zip(
                curve,
                (generation + 1, seconds, env_steps, float(returns.mean()), float(check.mean())),
                strict=True,
            ):
                curve[key].append(value)
            progress_bar.update()
            progress_bar.set_postfix_str(
                f"population {returns.mean():5.1f}  mean policy {check.mean():5.1f}"
            )
            if solved is None and check.mean() >= THRESHOLD:
                solved = {"generation": generation + 1, "env_steps": env_steps, "seconds": seconds}
                if stop:
                    break
    eval_returns, _ = mean_policy_returns(es.params, make_env(eval_episodes), int(seeds[-1]))
    return {
        "strategy": strategy + (f" r={rank}" if cls is eo.Eggroll else ""),
        "params": es.num_params,
        "generations": len(curve["generation"]),
        "env_steps": env_steps,
        "check_steps": check_steps,
        "seconds": curve["seconds"][-1],
        "solved": solved,
        "eval_mean": float(eval_returns.mean()),
        "eval_std": float(eval_returns.std()),
        "curve": curve,
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the example; returns the measured results of every strategy."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--hidden", type=int, default=64, help="hidden units (default 64)")
    parser.add_argument("--popsize", type=int, default=64, help="population (default 64)")
    parser.add_argument("--generations", type=int, default=50, help="budget (default 50)")
    parser.add_argument("--sigma", type=float, default=0.1, help="noise scale (default 0.1)")
    parser.add_argument("--learning-rate", type=float, default=0.05, help="Adam (default 0.05)")
    parser.add_argument("--rank", type=int, default=1, help="EGGROLL rank (default 1)")
    parser.add_argument(
        "--check-episodes", type=int, default=20, help="mean-policy check episodes (default 20)"
    )
    parser.add_argument(
        "--eval-episodes", type=int, default=100, help="final evaluation episodes (default 100)"
    )
    parser.add_argument(
        "--strategies", default="Eggroll,OpenES", help="comma-separated (default Eggroll,OpenES)"
    )
    parser.add_argument(
        "--stop", action="store_true", help="stop at the first generation that reaches 475"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--plot", default="", help="PNG path for the return curves")
    parser.add_argument("--quick", action="store_true", help="a few seconds, for CI")
    args = parser.parse_args(argv)
    if args.quick:
        args.hidden, args.popsize, args.generations, args.strategies = 16, 32, 8, "Eggroll"
        args.check_episodes, args.eval_episodes = 10, 20
    print(
        f"CartPole-v1 (gymnasium vector env), MLP 4-{args.hidden}-2, popsize {args.popsize}, "
        f"at most {args.generations} generations, one first episode per member"
    )
    names = [name.strip() for name in args.strategies.split(",")]
    for name in names:
        if name not in STRATEGIES:
            parser.error(f"--strategies: unknown {name!r}; choose from {sorted(STRATEGIES)}")
    results = [
        train(
            name,
            hidden=args.hidden,
            popsize=args.popsize,
            generations=args.generations,
            sigma=args.sigma,
            learning_rate=args.learning_rate,
            rank=args.rank,
            check_episodes=args.check_episodes,
            eval_episodes=args.eval_episodes,
            stop=args.stop,
            seed=args.seed,
            bar=not args.no_progress,
        )
        for name in names
    ]
    rows = []
    for r in results:
        solved = r["solved"]
        rows.append(
            {
                "method": r["strategy"],
                "generations": r["generations"],
                "env steps": r["env_steps"],
                "check steps": r["check_steps"],
                "seconds": r["seconds"],
                "reached 475 at (gen / env steps / s)": (
                    f"{solved['generation']} / {solved['env_steps']} / {solved['seconds']:.1f}"
                    if solved
                    else "not reached"
                ),
                f"final return ({args.eval_episodes} new episodes)": (
                    f"{r['eval_mean']:.1f} ± {r['eval_std']:.1f}"
                ),
            }
        )
    print("\n" + markdown_table(rows))
    print("\n" + markdown_table([PUBLISHED]))
    if args.plot:
        curves = {}
        for r in results:
            for key, label in (("population", "population mean"), ("mean", "mean policy")):
                curves[f"{r['strategy']} {label}"] = {**r["curve"], "return": r["curve"][key]}
        plot_curves(
            curves,
            args.plot,
            y="return",
            xs=("generation", "seconds", "env steps"),
            title=f"CartPole-v1, MLP 4-{args.hidden}-2, popsize {args.popsize}",
        )
    return {r["strategy"]: r for r in results}


if __name__ == "__main__":
    main()
