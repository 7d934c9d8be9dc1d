"""The one-page picture of a run: six panels over training steps, from {step: metrics}.

  reward and validation accuracy | visual focus by position (steps x 5 bins) | our share of each step
  psi range (min, mean, max)     | alpha range (min, mean, max)             | gate pass rate
A panel whose metrics the run did not log (a DAPO run has no vgpo/ keys) says so instead of a plot.
"""

from __future__ import annotations

import math
import pathlib

from vgpo_verl.methods.vgpo import FOCUS_BINS
from vgpo_verl.plugin.timing import SHARE_KEY
from vgpo_verl.plugin.tracking import FOCUS_PREFIX

REWARD_KEY = "critic/score/mean"
VAL_PREFIX = "val-core/"
GATE_KEY = "vgpo/gate_pass_rate"


def series(metrics: dict[int, dict[str, float]], key: str) -> tuple[list[int], list[float]]:
    """(steps, values) of the steps that logged `key`, in step order."""
    steps = sorted(step for step, values in metrics.items() if key in values)
    return steps, [metrics[step][key] for step in steps]


def focus_grid(metrics: dict[int, dict[str, float]]) -> tuple[list[int], list[list[float]]]:
    """(steps, rows of FOCUS_BINS values, NaN for a bin not logged) of the steps that logged any bin."""
    steps = sorted(step for step, values in metrics.items() if any(k.startswith(FOCUS_PREFIX) for k in values))
    return steps, [[metrics[step].get(f"{FOCUS_PREFIX}{k}", math.nan) for k in range(FOCUS_BINS)] for step in steps]


def write_page(metrics: dict[int, dict[str, float]], out: pathlib.Path, title: str) -> pathlib.Path:
    """Draw the page of `metrics` into the PNG `out` (its folder must exist); returns `out`."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(16, 9), dpi=100, layout="constrained")
    figure.suptitle(title)
    axes = figure.subplots(2, 3)
    _reward(axes[0][0], metrics)
    _focus(figure, axes[0][1], metrics)
    _line(axes[0][2], metrics, SHARE_KEY, "our share of each step (%)", scale=100.0)
    _range(axes[1][0], metrics, "vgpo/psi", "token weight psi")
    _range(axes[1][1], metrics, "vgpo/alpha", "trajectory weight alpha")
    _line(axes[1][2], metrics, GATE_KEY, "gate pass rate (share of scored tokens compensated)")
    figure.savefig(out)
    return out


def _steps_axis(ax, title: str) -> None:
    from matplotlib.ticker import MaxNLocator

    ax.set(title=title, xlabel="step")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def _missing(ax, title: str, what: str) -> None:
    ax.set_title(title)
    ax.text(0.5, 0.5, f"{what}\nnot logged in this run", ha="center", va="center", transform=ax.transAxes)
    ax.set_xticks([])
    ax.set_yticks([])


def _reward(ax, metrics) -> None:
    steps, reward = series(metrics, REWARD_KEY)
    val_keys = sorted({k for values in metrics.values() for k in values if k.startswith(VAL_PREFIX)})
    if not steps and not val_keys:
        return _missing(ax, "reward", REWARD_KEY)
    if steps:
        ax.plot(steps, reward, marker="o", label="reward (train, mean)")
    for key in val_keys:
        ax.plot(*series(metrics, key), marker="s", linestyle="--", label=key[len(VAL_PREFIX):])
    _steps_axis(ax, "reward and validation accuracy")
    ax.legend(fontsize="small")


def _focus(figure, ax, metrics) -> None:
    steps, grid = focus_grid(metrics)
    if not steps:
        return _missing(ax, "visual focus by position", FOCUS_PREFIX + "*")
    image = ax.imshow(grid, aspect="auto", origin="lower", cmap="viridis", interpolation="nearest",
                      extent=(0, 1, -0.5, len(steps) - 0.5))
    ticks = range(0, len(steps), max(1, len(steps) // 10))
    ax.set_yticks(list(ticks), [str(steps[i]) for i in ticks])
    ax.set(title="visual focus by position (the forgetting curve)", xlabel="position in the response (fraction)",
           ylabel="step")
    figure.colorbar(image, ax=ax, label="mean cosine similarity")


def _line(ax, metrics, key: str, title: str, scale: float = 1.0) -> None:
    steps, values = series(metrics, key)
    if not steps:
        return _missing(ax, title, key)
    ax.plot(steps, [scale * v for v in values], marker="o")
    _steps_axis(ax, title)


def _range(ax, metrics, prefix: str, title: str) -> None:
    steps, low = series(metrics, f"{prefix}_min")
    if not steps:
        return _missing(ax, title, f"{prefix}_min/_mean/_max")
    high = [metrics[step].get(f"{prefix}_max", math.nan) for step in steps]
    mean = [metrics[step].get(f"{prefix}_mean", math.nan) for step in steps]
    ax.fill_between(steps, low, high, alpha=0.3, label="min .. max")
    ax.plot(steps, mean, marker="o", label="mean")
    _steps_axis(ax, title)
    ax.legend(fontsize="small")
