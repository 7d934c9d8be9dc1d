"""The forgetting curve as a chart in the user's own logger (`algorithm.vgpo.focus_chart_every`).

verl's `Tracking` (verl.utils.tracking) sends each step's metrics to the backends of `trainer.logger`,
in the process that runs the trainer. Its `log` is wrapped here: on a step that logged VGPO's focus
curve (`vgpo/focus_by_position/bin_0..4`, the mean visual similarity in each fifth of the responses)
and is a multiple of `focus_chart_every`, that curve and the first one this process logged go
- to W&B as a line chart (`wandb.plot.line_series`: W&B draws it from a table), and
- to TensorBoard as a figure (matplotlib, `SummaryWriter.add_figure`),
both under the key `vgpo/forgetting_curve`. Other backends get nothing more, a console-only run does
no work at all, and a chart that fails is a warning, never a failed step. `finish` also closes W&B's
service connection (`wandb.teardown`) while its process still runs.
"""

from __future__ import annotations

import logging
import math
from typing import Any

from vgpo_verl.methods.vgpo import FOCUS_BINS, VGPOConfig

logger = logging.getLogger("vgpo_verl")

CHART_KEY = "vgpo/forgetting_curve"
CHART_BACKENDS = ("wandb", "tensorboard")
FOCUS_PREFIX = "vgpo/focus_by_position/bin_"
# x of each bin: the centre of its fifth of the response, as a fraction of the response length
POSITIONS = [(k + 0.5) / FOCUS_BINS for k in range(FOCUS_BINS)]
POSITION_LABEL = "position in the response (fraction)"
FOCUS_LABEL = "visual focus (mean cosine similarity)"


def focus_curve(data: dict[str, Any]) -> list[float] | None:
    """The step's FOCUS_BINS focus values (NaN for a bin no token reached), None if it logged none."""
    values = [data.get(f"{FOCUS_PREFIX}{k}") for k in range(FOCUS_BINS)]
    if all(value is None for value in values):
        return None
    return [math.nan if value is None else float(value) for value in values]


class ForgettingChart:
    """Which steps get a chart, and the curve each is drawn against (the first one logged)."""

    def __init__(self, every: int):
        self.every = every
        self.first: tuple[int, list[float]] | None = None

    def curves(self, step: int, data: dict[str, Any]) -> dict[int, list[float]] | None:
        """{step: curve} to draw at this step (the first logged curve, then this one), or None."""
        curve = focus_curve(data)
        if curve is None or self.every <= 0:
            return None
        if self.first is None:
            self.first = (step, curve)
        if step % self.every != 0 and step != self.first[0]:
            return None
        return dict([self.first, (step, curve)])


def chart_every(config: Any) -> int:
    """`algorithm.vgpo.focus_chart_every` of Tracking's config dict (VGPOConfig's default if unset)."""
    try:
        block = (config or {}).get("algorithm", {}).get("vgpo") or {}
    except AttributeError:
        block = {}
    return int(block.get("focus_chart_every", VGPOConfig.focus_chart_every))


def line_figure(curves: dict[int, list[float]]):
    """A matplotlib Figure of the curves (no pyplot: safe in any process, any backend)."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(5, 3.2), dpi=100, layout="constrained")
    ax = figure.add_subplot()
    for step, curve in curves.items():
        ax.plot(POSITIONS, curve, marker="o", label=f"step {step}")
    ax.set(xlabel=POSITION_LABEL, ylabel=FOCUS_LABEL, title="visual focus along the response", xlim=(0, 1))
    ax.legend()
    return figure


def draw(tracking: Any, step: int, curves: dict[int, list[float]], backend: Any = None) -> None:
    """Send the chart to the W&B and TensorBoard backends `tracking` holds (those in `backend`, if given)."""
    chosen = {name: tracking.logger[name] for name in CHART_BACKENDS
              if name in tracking.logger and (backend is None or name in backend)}
    if "wandb" in chosen:
        wandb = chosen["wandb"]
        chart = wandb.plot.line_series(xs=POSITIONS, ys=list(curves.values()),
                                       keys=[f"step {s}" for s in curves], title="visual focus along the response",
                                       xname=POSITION_LABEL)
        wandb.log({CHART_KEY: chart}, step=step)
    if "tensorboard" in chosen:
        chosen["tensorboard"].writer.add_figure(CHART_KEY, line_figure(curves), global_step=step)


def _wrap_init(original):
    def __init__(self, *args, **kwargs):
        original(self, *args, **kwargs)
        self._vgpo_chart = None
        if any(name in getattr(self, "logger", {}) for name in CHART_BACKENDS):
            config = kwargs.get("config", args[3] if len(args) > 3 else None)
            try:
                self._vgpo_chart = ForgettingChart(chart_every(config))
            except (TypeError, ValueError):  # the start-up check names the bad value (VGPOConfig)
                logger.warning("vgpo-verl: algorithm.vgpo.focus_chart_every is not an integer; no forgetting chart")

    __init__.__wrapped__ = original
    return __init__


def _wrap_log(original):
    def log(self, data, step, backend=None):
        original(self, data=data, step=step, backend=backend)
        chart = getattr(self, "_vgpo_chart", None)
        if chart is None:
            return
        try:
            curves = chart.curves(step, data)
            if curves is not None:
                draw(self, step, curves, backend)
        except Exception:  # a picture is never worth a failed step
            logger.warning("vgpo-verl: the forgetting-curve chart of step %s failed; training goes on", step,
                           exc_info=True)

    log.__wrapped__ = original
    return log


def _wrap_finish(original):
    def finish(self, *args, **kwargs):
        wandb = None if getattr(self, "_finished", False) else getattr(self, "logger", {}).get("wandb")
        original(self, *args, **kwargs)
        if wandb is not None:  # the first finish only (verl's __del__ calls it again, maybe at shutdown)
            # close W&B's service connection now, while its process lives: left to W&B's atexit hook, the
            # trainer's Ray actor may outlive that process and print a "Connection lost" traceback at exit
            try:
                wandb.teardown()
            except Exception:
                logger.warning("vgpo-verl: wandb.teardown() after the run failed", exc_info=True)

    finish.__wrapped__ = original
    return finish


def install() -> None:
    """Wrap verl.utils.tracking.Tracking's __init__, log and finish (once)."""
    from verl.utils.tracking import Tracking

    if not hasattr(Tracking.log, "__wrapped__"):
        Tracking.__init__ = _wrap_init(Tracking.__init__)
        Tracking.log = _wrap_log(Tracking.log)
        Tracking.finish = _wrap_finish(Tracking.finish)
