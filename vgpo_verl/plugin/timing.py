"""What our code costs in every training step, as seconds in verl's own `timing_s/` metrics.

| metric                     | what is timed                                               | where          |
|----------------------------|-------------------------------------------------------------|----------------|
| `timing_s/vgpo_score`      | VGPO's scoring in the old-log-prob pass (hook + slicing)    | actor workers  |
| `timing_s/vppo_aug_forward`| VPPO's extra forward on perturbed images                    | actor workers  |
| `timing_s/vgpo_weights`    | our estimator: its inputs fetched (v1), its weights applied | driver         |
| `perf/our_share_of_step`   | the three above over verl's `timing_s/step`                 | driver         |

Worker seconds are summed over a pass's micro-batches on each rank (`PassTimer`, read once after the
pass), then averaged over ranks on the driver (`mean_over_ranks`), as verl reduces its workers'
timings (`verl.utils.profiler.performance.reduce_timing`: all-reduce AVG). Each rank's sum rides back
with verl's own worker metrics (`compute_log_prob`'s `metrics`), so no TransferQueue field is added.

`timing_s/vgpo_weights` is one key for all three estimators (vgpo, entropy_shaping, vppo): a run uses
one of them, and one name puts the arms of a comparison side by side in a logger. It leaves out
verl's GRPO base advantage, which every method reshapes and GRPO itself would spend.

Within a step the seconds accumulate like verl's `timing_raw` (several old-log-prob passes per step
add up) until the trainer logs its timing metrics (vgpo_verl.plugin.trainer_wiring wraps verl's
`compute_timing_metrics`). Plain Python and torch: no verl import.
"""

from __future__ import annotations

import contextlib
import math
import time
from typing import Any, Callable

import torch

SCORE = "vgpo_score"
AUG_FORWARD = "vppo_aug_forward"
WEIGHTS = "vgpo_weights"
NAMES = (SCORE, AUG_FORWARD, WEIGHTS)
TIMING_PREFIX = "timing_s/"  # verl's prefix for seconds (metric_utils.compute_timing_metrics)
SHARE_KEY = "perf/our_share_of_step"


class PassTimer:
    """Seconds spent in named regions of one engine pass, summed per name.

    On CUDA each region is a pair of CUDA events recorded on the current stream: nothing waits for
    the device while the pass runs, and `seconds()` reads them all once afterwards. Elsewhere (CPU)
    each region is timed with `clock` (time.perf_counter), which the work blocks anyway.
    """

    def __init__(self, cuda_events: bool, clock: Callable[[], float] = time.perf_counter):
        self.cuda_events = cuda_events
        self.clock = clock
        self._events: dict[str, list[tuple[Any, Any]]] = {}
        self._seconds: dict[str, float] = {}

    @contextlib.contextmanager
    def measure(self, name: str):
        if self.cuda_events:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            try:
                yield
            finally:
                end.record()
                self._events.setdefault(name, []).append((start, end))
        else:
            start = self.clock()
            try:
                yield
            finally:
                self._seconds[name] = self._seconds.get(name, 0.0) + self.clock() - start

    def wrap(self, name: str, fn: Callable) -> Callable:
        """`fn` with every call measured under `name`."""
        def measured(*args, **kwargs):
            with self.measure(name):
                return fn(*args, **kwargs)
        return measured

    def seconds(self) -> dict[str, float]:
        """name -> seconds summed over its regions (waits once for the last CUDA event of each name)."""
        totals = dict(self._seconds)
        for name, pairs in self._events.items():
            pairs[-1][1].synchronize()  # same stream: the earlier events have completed too
            totals[name] = totals.get(name, 0.0) + sum(start.elapsed_time(end) for start, end in pairs) / 1e3
        return totals


def mean_over_ranks(worker_metrics: Any, key: str) -> float | None:
    """The mean over ranks of a per-rank value `key`, from the metrics a worker call handed back.

    `worker_metrics`: one dict, or a list of dicts (one per collecting rank); a value is a number or
    a list of numbers. verl gathers each worker's metrics over the data-parallel group
    (TrainingWorker._postprocess_output: one list entry per DP rank), and the v1 trainer's
    TransferQueue bridge returns one such dict per collecting rank (BatchData.concat). Every rank's
    value then appears equally often, so the mean of all values is the mean over ranks.
    None if no dict has `key`.
    """
    dicts = worker_metrics if isinstance(worker_metrics, (list, tuple)) else [worker_metrics]
    values = [float(v) for d in dicts if isinstance(d, dict) and key in d for v in _flat(d[key])]
    return sum(values) / len(values) if values else None


def _flat(value: Any) -> list:
    if isinstance(value, (list, tuple)):
        return [v for item in value for v in _flat(item)]
    return [value]


# ---------------------------------------------------------------- the driver's tally for the current step

_step_seconds: dict[str, float] = {}  # one trainer process; the fit loop runs a step's calls in turn


def add_step_seconds(name: str, seconds: float) -> None:
    if name not in NAMES:
        raise ValueError(f"unknown timing {name!r}; expected one of {NAMES}")
    if not (seconds >= 0 and math.isfinite(seconds)):
        raise ValueError(f"timing {name!r}: {seconds} is not a duration in seconds")
    _step_seconds[name] = _step_seconds.get(name, 0.0) + seconds


@contextlib.contextmanager
def on_driver(name: str):
    """Add the block's wall seconds to this step's `name` (driver code works on CPU tensors)."""
    start = time.perf_counter()
    try:
        yield
    finally:
        add_step_seconds(name, time.perf_counter() - start)


def pop_step_seconds() -> dict[str, float]:
    """This step's seconds by name (then forgotten)."""
    seconds = dict(_step_seconds)
    _step_seconds.clear()
    return seconds


def step_metrics(seconds: dict[str, float], step_seconds: float | None) -> dict[str, float]:
    """`timing_s/<name>` for each timed name, and `perf/our_share_of_step` when the step's seconds are
    known; {} when nothing of ours ran."""
    if not seconds:
        return {}
    metrics = {TIMING_PREFIX + name: value for name, value in seconds.items()}
    if step_seconds:
        metrics[SHARE_KEY] = sum(seconds.values()) / step_seconds
    return metrics
