"""The demo's closing summary, read from verl's file logger (one JSON line per step: {"step", "data"})."""

from __future__ import annotations

import json
import pathlib

# the live forgetting curve (vgpo_verl.methods.vgpo.vgpo_metrics): one line per step instead of one per bin
from vgpo_verl.plugin.tracking import FOCUS_PREFIX

REWARD_KEY = "critic/score/mean"
ADVANTAGE_KEYS = ("critic/advantages/max", "critic/advantages/min")
# rollout (vLLM) vs actor agreement on the same tokens, images included: verl's rollout_corr/ metrics
ROLLOUT_CORR_KEYS = ("rollout_corr/kl", "rollout_corr/k3_kl", "rollout_corr/log_ppl_abs_diff", "rollout_corr/ppl_ratio")
STEP_TIME_KEY = "timing_s/step"
NO_VISUAL_KEY = "vgpo/no_visual_fraction"
VAL_PREFIX = "val-core/"


def read_metrics(path: pathlib.Path) -> dict[int, dict[str, float]]:
    """step -> metrics (lines logged for the same step are merged); empty if the file is missing."""
    by_step: dict[int, dict[str, float]] = {}
    if not path.exists():
        return by_step
    for line in path.read_text().splitlines():
        if line.strip():
            record = json.loads(line)
            by_step.setdefault(int(record["step"]), {}).update(record["data"])
    return by_step


def training_steps(metrics: dict[int, dict[str, float]]) -> list[int]:
    return sorted(step for step, values in metrics.items() if REWARD_KEY in values)


def focus_line(values: dict[str, float]) -> str | None:
    """The step's forgetting curve, first to last fifth of the response (`-` for a bin not logged),
    or None when the step logged none."""
    bins = sorted(int(k[len(FOCUS_PREFIX):]) for k in values if k.startswith(FOCUS_PREFIX))
    if not bins:
        return None
    return " ".join(f"{values[FOCUS_PREFIX + str(k)]:.3f}" if FOCUS_PREFIX + str(k) in values else "-"
                    for k in range(bins[-1] + 1))


def render_summary(metrics, steps: int, estimator: str, exit_code: int, wall_s: float,
                   peak_memory_bytes: int, run_dir: pathlib.Path, resumed_from: int = 0,
                   page: pathlib.Path | None = None) -> tuple[str, bool]:
    """The summary text, and whether the run shows everything the demo promises.

    Complete means: verl exited 0, training steps resumed_from + 1 .. `steps` (and no other) were
    logged with a reward, a validation ran, and for our estimators (vgpo_verl.plugin.method_table) every step
    has the method's metrics (`vgpo/`, `entropy/`, `vppo/`); for vgpo also no response lacking a
    visual token. `resumed_from`: the checkpoint's step this run continued from (0: a fresh run).
    `page`: the run's report page (vgpo_verl.report), None if none was written.
    """
    from vgpo_verl.plugin.method_table import method_of

    method = method_of(estimator)
    done = training_steps(metrics)
    retrained = [step for step in done if step <= resumed_from]
    done = [step for step in done if step > resumed_from]
    val = {k: v for values in metrics.values() for k, v in values.items() if k.startswith(VAL_PREFIX)}
    lines = ["", "=" * 72, f"vgpo-verl demo summary (adv_estimator={estimator})", "=" * 72]
    lines.append(f"verl exit code      {exit_code}")
    if resumed_from:
        lines.append(f"resumed from step {resumed_from}")
    lines.append(f"training steps      {len(done)} of {steps - resumed_from}")
    problems = []
    for step in done:
        values = metrics[step]
        step_time = values.get(STEP_TIME_KEY)
        timing = f", step time {step_time:.1f} s" if step_time is not None else ""
        lines.append(f"  step {step}: reward (accuracy) {values[REWARD_KEY]:.3f}{timing}")
        cost = our_cost(values)
        if cost:
            lines.append(f"    {cost}")
        # one block per step: verl's reward and advantages, rollout/actor agreement, the method's metrics
        shown = {k: values[k] for k in (REWARD_KEY, *ADVANTAGE_KEYS, *ROLLOUT_CORR_KEYS) if k in values}
        if method is not None:
            shown.update({k: v for k, v in values.items()
                          if k.startswith(method.metric_prefix) and isinstance(v, (int, float))
                          and not k.startswith(FOCUS_PREFIX)})
        lines.extend(f"    {k:<34} {v:+.4g}" for k, v in shown.items())
        focus = focus_line(values)
        if focus is not None:
            lines.append(f"    {'vgpo/focus_by_position (5ths)':<34} {focus}")
        if method is not None:
            own = {k: v for k, v in values.items() if k.startswith(method.metric_prefix)}
            if not own:
                problems.append(f"step {step} has no {method.metric_prefix} metrics")
            elif estimator == "vgpo" and own.get(NO_VISUAL_KEY) != 0:
                problems.append(f"step {step}: {NO_VISUAL_KEY} = {own.get(NO_VISUAL_KEY)} (expected 0)")
    for key, value in sorted(val.items()):
        lines.append(f"validation          {key} = {value:.3f}")
    if not val:
        lines.append("validation          (none logged)")

    if exit_code != 0:
        problems.append(f"verl exited with code {exit_code}")
    if len(done) != steps - resumed_from:
        problems.append(f"{len(done)} training steps logged, expected {steps - resumed_from}")
    if retrained:
        problems.append(f"steps {retrained} were trained again: the run did not resume from step {resumed_from}")
    if not val:
        problems.append("no validation metrics logged")

    lines.append(f"wall time           {wall_s / 60:.1f} min ({wall_s:.0f} s)")
    lines.append(f"peak memory (PSS)   {peak_memory_bytes / 2**30:.1f} GiB, all processes of the run")
    lines.append(f"logs                {run_dir / 'train.log'}")
    lines.append(f"metrics (jsonl)     {run_dir / 'metrics.jsonl'}")
    for label, path in logger_folders(run_dir).items():
        lines.append(f"{label:<20}{path}")
    lines.append(f"report (PNG)        {page if page is not None else '(none: no step was logged)'}")
    if problems:
        lines.append("INCOMPLETE: " + "; ".join(problems))
    lines.append("=" * 72)
    return "\n".join(lines), not problems


def our_cost(values: dict[str, float]) -> str | None:
    """What our own code took in a step (vgpo_verl.plugin.timing's keys), e.g. "our code 0.412 s
    (vgpo_score 0.401 s, vgpo_weights 0.011 s), 1.20 % of the step"; None if the step has none."""
    from vgpo_verl.plugin.timing import NAMES, SHARE_KEY, TIMING_PREFIX

    parts = {name: values[TIMING_PREFIX + name] for name in NAMES if TIMING_PREFIX + name in values}
    if not parts:
        return None
    text = f"our code {sum(parts.values()):.3f} s (" + ", ".join(f"{n} {s:.3f} s" for n, s in parts.items()) + ")"
    if SHARE_KEY in values:
        text += f", {100 * values[SHARE_KEY]:.2f} % of the step"
    return text


def logger_folders(run_dir: pathlib.Path) -> dict[str, pathlib.Path]:
    """Where the run's W&B offline run (the newest) and TensorBoard events are, those that exist."""
    from vgpo_verl.demo.run import TENSORBOARD_FOLDER, WANDB_FOLDER

    found = {}
    wandb_runs = sorted((run_dir / WANDB_FOLDER).glob("offline-run-*"))
    if wandb_runs:
        found["W&B (offline)"] = wandb_runs[-1]
    if (run_dir / TENSORBOARD_FOLDER).is_dir():
        found["TensorBoard"] = run_dir / TENSORBOARD_FOLDER
    return found
