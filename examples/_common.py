"""What the example scripts share: strategies by name, a progress bar, a markdown table, a plot.

tqdm and matplotlib come with the ``examples`` extra (``pip install -e ".[examples]"``); without
them the scripts still run, without a bar or a plot.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import eggroll_opt as eo
from eggroll_opt import optim

STRATEGIES = {"Eggroll": eo.Eggroll, "OpenES": eo.OpenES}


def strategy_class(name: str) -> type[eo.Eggroll]:
    """The strategy class called ``name`` (``"Eggroll"`` or ``"OpenES"``).

    Raises:
        ValueError: for any other name (a typo must not silently run another strategy).
    """
    if name not in STRATEGIES:
        raise ValueError(f"unknown strategy {name!r}; choose from {sorted(STRATEGIES)}.")
    return STRATEGIES[name]


class _NoBar:
    """Stands in for a tqdm bar when tqdm is missing or the bar is switched off."""

    def update(self, count: int = 1) -> None:
        pass

    def set_postfix_str(self, text: str) -> None:
        pass

    def close(self) -> None:
        pass

    def __enter__(self) -> _NoBar:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def progress(total: int, desc: str, *, unit: str = "gen", enabled: bool = True) -> Any:
    """A tqdm progress bar of ``total`` steps (a silent stand-in without tqdm or when off)."""
    if not enabled:
        return _NoBar()
    try:
        from tqdm import tqdm
    except ImportError:
        return _NoBar()
    return tqdm(total=total, desc=desc, unit=unit, leave=False)


def markdown_table(rows: Sequence[Mapping[str, Any]], columns: Iterable[str] | None = None) -> str:
    """A markdown table of ``rows`` (dicts); floats get 4 significant digits.

    Example:
        >>> print(markdown_table([{"method": "EGGROLL", "loss": 0.012345}]))
        | method | loss |
        |---|---|
        | EGGROLL | 0.01234 |
    """
    columns = list(columns if columns is not None else rows[0].keys())

    def cell(value: Any) -> str:
        if isinstance(value, float):
            return f"{value:.4g}"
        return str(value)

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(row.get(c, "")) for c in columns) + " |" for row in rows]
    return "\n".join(lines)


def plot_curves(
    curves: Mapping[str, Mapping[str, Sequence[float]]],
    path: str,
    *,
    y: str,
    xs: Sequence[str] = ("generation", "seconds"),
    ylabel: str | None = None,
    logy: bool = False,
    title: str = "",
) -> bool:
    """One panel per x key: ``curves[label][x]`` against ``curves[label][y]``, saved as PNG.

    Returns False (and prints why) when matplotlib is not installed.
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no plot (pip install -e '.[examples]')")
        return False
    figure, axes = plt.subplots(1, len(xs), figsize=(5 * len(xs), 4), squeeze=False)
    for axis, x in zip(axes[0], xs, strict=True):
        for label, curve in curves.items():
            axis.plot(curve[x], curve[y], label=label)
        axis.set_xlabel(x)
        axis.set_ylabel(ylabel or y)
        if logy:
            axis.set_yscale("log")
        axis.grid(alpha=0.3)
    axes[0][0].legend()
    if title:
        figure.suptitle(title)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    print(f"plot: {path}")
    return True


def cosine_adam(
    learning_rate: float, steps: int, final_fraction: float = 0.1
) -> optim.GradientTransformation:
    """Adam whose step size falls along a cosine to ``final_fraction * learning_rate``."""

    def init(params: dict[str, Any]) -> dict[str, int]:
        return {"count": 0}

    def update(grads: dict[str, Any], state: dict[str, int], params: dict[str, Any]) -> Any:
        progress_ = min(state["count"], steps) / max(steps, 1)
        factor = final_fraction + (1 - final_fraction) * 0.5 * (1 + math.cos(math.pi * progress_))
        for grad in grads.values():
            grad *= -learning_rate * factor
        return grads, {"count": state["count"] + 1}

    return optim.chain(optim.scale_by_adam(), optim.GradientTransformation(init, update))
