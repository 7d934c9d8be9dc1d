"""vgpo_verl.plugin.tracking: the forgetting curve as a chart in the user's W&B and TensorBoard, through
verl's own Tracking (W&B offline, read back from its run file; TensorBoard read with its own reader)."""

import json
import logging
import math
import re

import pytest

from _logged_run import FOCUS, log_run, step_metrics
from vgpo_verl.methods.vgpo import VGPOConfig
from vgpo_verl.plugin import tracking as charts
from vgpo_verl.report.runs import read_wandb_run


def test_verl_tracking_is_hooked_by_the_plugin():
    from verl.utils.tracking import Tracking

    assert Tracking.log.__wrapped__ and Tracking.__init__.__wrapped__ and Tracking.finish.__wrapped__


def test_chart_steps_are_the_first_logged_and_every_nth():
    chart = charts.ForgettingChart(every=3)
    drawn = {step: chart.curves(step, step_metrics(step)) for step in range(1, 8)}
    assert [step for step, curves in drawn.items() if curves] == [1, 3, 6]
    assert list(drawn[1]) == [1] and list(drawn[6]) == [1, 6]  # the first curve, then this step's against it
    assert drawn[6][6] == [step_metrics(6)[f"{FOCUS}{k}"] for k in range(5)]
    assert chart.curves(9, {"critic/score/mean": 1.0}) is None  # a step without the curve (DAPO) draws nothing
    assert charts.ForgettingChart(every=0).curves(1, step_metrics(1)) is None


def test_a_bin_no_token_reached_is_a_gap():
    metrics = {f"{FOCUS}0": 0.4, f"{FOCUS}2": 0.1}
    curve = charts.focus_curve(metrics)
    assert curve[0] == 0.4 and curve[2] == 0.1 and all(math.isnan(curve[k]) for k in (1, 3, 4))


def test_chart_every_reads_the_vgpo_block_and_defaults_to_the_knob():
    assert charts.chart_every({"algorithm": {"vgpo": {"focus_chart_every": 4}}}) == 4
    assert charts.chart_every({"algorithm": {"adv_estimator": "grpo"}}) == VGPOConfig.focus_chart_every == 10
    assert charts.chart_every(None) == 10


@pytest.mark.parametrize("bad", [-1, True, 2.5, "5"])
def test_focus_chart_every_must_be_a_whole_number(bad):
    with pytest.raises(ValueError, match="focus_chart_every"):
        VGPOConfig(focus_chart_every=bad)
    assert VGPOConfig(focus_chart_every=0).focus_chart_every == 0  # 0: no chart, as documented


def test_wandb_and_tensorboard_get_every_key_and_the_chart(tmp_path, monkeypatch):
    paths = log_run(tmp_path, monkeypatch, steps=3, every=2)

    # W&B: every scalar at every step, in its own run file
    logged = read_wandb_run(next(paths["wandb"].glob("run-*.wandb")))
    for step in (1, 2, 3):
        assert {k: v for k, v in logged[step].items() if k in step_metrics(step)} == pytest.approx(step_metrics(step))
    # ... and the chart at the first step and at step 2: a line per step, W&B's line_series table
    tables = {int(re.search(r"_table_(\d+)_", p.name).group(1)): json.loads(p.read_text())
              for p in paths["wandb"].glob("files/media/table/vgpo/forgetting_curve_table_*.table.json")}
    assert sorted(tables) == [1, 2]
    lines = {}
    for x, key, value in tables[2]["data"]:
        lines.setdefault(key, []).append((x, value))
    assert sorted(lines) == ["step 1", "step 2"]
    assert [v for _, v in sorted(lines["step 2"])] == pytest.approx([step_metrics(2)[f"{FOCUS}{k}"] for k in range(5)])
    assert [x for x, _ in sorted(lines["step 1"])] == pytest.approx([0.1, 0.3, 0.5, 0.7, 0.9])  # each fifth's centre

    # TensorBoard, through its own reader: the same scalars, and the chart as an image at steps 1 and 2
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(paths["tensorboard"]), size_guidance={"images": 0, "scalars": 0})
    events.Reload()
    for key in step_metrics(1):
        assert [(e.step, round(e.value, 6)) for e in events.Scalars(key)] == [
            (s, round(step_metrics(s)[key], 6)) for s in (1, 2, 3)], key
    images = events.Images(charts.CHART_KEY)
    assert [image.step for image in images] == [1, 2] and all(image.width > 300 for image in images)


def test_console_only_does_no_chart_work(monkeypatch, tmp_path):
    from verl.utils.tracking import Tracking

    def fail(*args, **kwargs):
        raise AssertionError("a chart was drawn for a console-only run")

    monkeypatch.setattr(charts, "draw", fail)
    tracking = Tracking("p", "e", ["console"], config={"trainer": {}})
    tracking.log(step_metrics(1), 1)
    assert tracking._vgpo_chart is None


def test_a_failing_chart_is_a_warning_not_a_failed_step(monkeypatch, tmp_path, caplog):
    def fail(curves):
        raise RuntimeError("no fonts")

    monkeypatch.setattr(charts, "line_figure", fail)
    with caplog.at_level(logging.WARNING, logger="vgpo_verl"):
        paths = log_run(tmp_path, monkeypatch, steps=1, every=1, loggers=("tensorboard", "file"))
    assert "forgetting-curve chart of step 1 failed" in caplog.text
    assert "critic/score/mean" in json.loads(paths["file"].read_text().splitlines()[0])["data"]


def test_a_chart_step_keeps_every_metric_of_that_step_in_wandb(tmp_path, monkeypatch):
    """The chart is logged at its step (not W&B's next one): a validation logged after it, at the same step,
    is kept."""
    paths = log_run(tmp_path, monkeypatch, steps=2, every=1, loggers=("wandb",))
    logged = read_wandb_run(next(paths["wandb"].glob("run-*.wandb")))
    assert logged[2]["val-core/shapes/acc/mean@1"] == 0.75 and logged[2]["critic/score/mean"] == pytest.approx(0.2)
    assert len(list(paths["wandb"].glob("files/media/table/vgpo/forgetting_curve_table_*.table.json"))) == 2


def test_a_log_call_for_other_backends_draws_no_chart():
    """Tracking.log(..., backend=[...]) sends to those backends only; the chart follows the same filter."""
    class Board:
        writer = None  # touching it would fail

    tracking = type("Tracking", (), {"logger": {"tensorboard": Board()}})()
    charts.draw(tracking, 2, {1: [0.0] * 5}, backend=["console"])


def test_the_config_is_read_when_verl_passes_it_by_position():
    tracking = type("Tracking", (), {})()
    tracking.logger = {"tensorboard": object()}
    init = charts._wrap_init(lambda self, *args, **kwargs: None)
    init(tracking, "project", "experiment", ["tensorboard"], {"algorithm": {"vgpo": {"focus_chart_every": 3}}})
    assert tracking._vgpo_chart.every == 3


def test_a_second_finish_does_not_tear_wandb_down_again(monkeypatch):
    from verl.utils.tracking import Tracking

    calls = []
    fake_wandb = type("W", (), {"teardown": staticmethod(lambda: calls.append("teardown")),
                                "finish": staticmethod(lambda exit_code=0: calls.append("finish"))})
    tracking = Tracking.__new__(Tracking)
    tracking.logger, tracking._finished = {"wandb": fake_wandb}, False
    tracking.finish()
    tracking.finish()  # what verl's __del__ does, perhaps at interpreter shutdown
    assert calls == ["finish", "teardown"]
