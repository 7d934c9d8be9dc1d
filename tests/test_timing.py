"""vgpo_verl.plugin.timing: our seconds per step, summed per pass, averaged over ranks, logged by verl's timing metrics.

Clocks are stand-ins returning set values, so every sum below is exact (no timing threshold).
"""

import types

import pytest
import torch

from vgpo_verl.plugin import timing


class Clock:
    """time.perf_counter stand-in: each call returns the next of the given readings."""

    def __init__(self, *readings):
        self.readings = list(readings)

    def __call__(self):
        return self.readings.pop(0)


@pytest.fixture(autouse=True)
def empty_tally():
    timing.pop_step_seconds()
    yield
    timing.pop_step_seconds()


def test_pass_timer_sums_the_regions_of_each_name():
    timer = timing.PassTimer(cuda_events=False, clock=Clock(10.0, 10.5, 20.0, 20.25, 30.0, 31.0))
    double = timer.wrap(timing.SCORE, lambda x: 2 * x)
    assert double(3) == 6  # the wrapped function's result passes through
    with timer.measure(timing.SCORE):
        pass
    with timer.measure(timing.AUG_FORWARD):
        pass
    assert timer.seconds() == {timing.SCORE: 0.75, timing.AUG_FORWARD: 1.0}


def test_pass_timer_counts_a_region_that_raises():
    timer = timing.PassTimer(cuda_events=False, clock=Clock(1.0, 3.0))
    with pytest.raises(ValueError), timer.measure(timing.SCORE):
        raise ValueError("boom")
    assert timer.seconds() == {timing.SCORE: 2.0}


class FakeCudaEvent:
    """torch.cuda.Event as the timer uses it: record() stamps a time (here: a scripted one, in ms),
    elapsed_time(end) is in milliseconds as CUDA's is, synchronize() is counted."""

    stamps_ms: list[float] = []
    synchronized: list["FakeCudaEvent"] = []

    def __init__(self, enable_timing: bool):
        assert enable_timing
        self.ms = None

    def record(self):
        self.ms = FakeCudaEvent.stamps_ms.pop(0)

    def elapsed_time(self, end: "FakeCudaEvent") -> float:
        return end.ms - self.ms

    def synchronize(self):
        FakeCudaEvent.synchronized.append(self)


def test_pass_timer_converts_cuda_event_milliseconds_to_seconds_and_waits_once_per_name(monkeypatch):
    """The CUDA path's arithmetic on CPU (the GPU test below runs it on a device): regions of 250 ms and
    1500 ms under one name, 40 ms under another, read after the pass."""
    monkeypatch.setattr(torch.cuda, "Event", FakeCudaEvent)
    FakeCudaEvent.stamps_ms, FakeCudaEvent.synchronized = [0.0, 250.0, 1000.0, 2500.0, 3000.0, 3040.0], []
    timer = timing.PassTimer(cuda_events=True)
    for name in (timing.SCORE, timing.SCORE, timing.AUG_FORWARD):
        with timer.measure(name):
            pass
    assert FakeCudaEvent.synchronized == []  # nothing waits for the device while the pass runs
    assert timer.seconds() == {timing.SCORE: pytest.approx(1.75), timing.AUG_FORWARD: pytest.approx(0.04)}
    assert len(FakeCudaEvent.synchronized) == 2  # the last end event of each name, once


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA events need a CUDA device")
def test_pass_timer_reads_cuda_events_after_the_pass():
    timer = timing.PassTimer(cuda_events=True)
    x = torch.randn(2048, 2048, device="cuda")
    for _ in range(3):
        with timer.measure(timing.SCORE):
            x = x @ x / 2048
    seconds = timer.seconds()[timing.SCORE]  # the events are read here, once
    assert 0 < seconds < float("inf")


@pytest.mark.parametrize("worker_metrics, expected", [
    ({"timing_s/vgpo_score": 0.5, "mfu": 0.1}, 0.5),  # one rank, as infer_batch returns it
    ({"timing_s/vgpo_score": [0.5, 1.5]}, 1.0),  # legacy: one dict, gathered over 2 DP ranks
    # v1: one dict per collecting rank (TransferQueue bridge), each gathered over the DP group
    ([{"timing_s/vgpo_score": [0.5, 1.5]}, {"timing_s/vgpo_score": [0.5, 1.5]}], 1.0),
    ([{"timing_s/vgpo_score": [[0.5], [1.5], [4.0]]}] * 3, 2.0),  # nested lists flatten
    ([{"mfu": 0.1}], None),  # an unflagged pass
    (None, None),
])
def test_mean_over_ranks_of_every_layout_verl_returns(worker_metrics, expected):
    assert timing.mean_over_ranks(worker_metrics, "timing_s/vgpo_score") == expected


def test_step_tally_accumulates_and_gives_verls_timing_keys_and_our_share():
    timing.add_step_seconds(timing.SCORE, 1.0)
    timing.add_step_seconds(timing.SCORE, 0.5)  # a second old-log-prob pass in the same step
    timing.add_step_seconds(timing.WEIGHTS, 0.5)
    metrics = timing.step_metrics(timing.pop_step_seconds(), step_seconds=20.0)
    assert metrics == {"timing_s/vgpo_score": 1.5, "timing_s/vgpo_weights": 0.5, "perf/our_share_of_step": 0.1}
    assert timing.pop_step_seconds() == {}
    assert timing.step_metrics({}, 20.0) == {}  # nothing of ours ran: no key
    assert timing.step_metrics({timing.WEIGHTS: 0.5}, None) == {"timing_s/vgpo_weights": 0.5}


def test_on_driver_adds_the_blocks_seconds(monkeypatch):
    monkeypatch.setattr(timing, "time", types.SimpleNamespace(perf_counter=Clock(1.0, 1.5, 2.0, 4.0)))
    with timing.on_driver(timing.WEIGHTS):
        pass
    with pytest.raises(ValueError), timing.on_driver(timing.WEIGHTS):
        raise ValueError("boom")  # a block that raises counts too
    assert timing.pop_step_seconds() == {timing.WEIGHTS: 2.5}


@pytest.mark.parametrize("name, seconds", [("vgpo_scoring", 1.0), (timing.SCORE, -1.0), (timing.SCORE, float("nan"))])
def test_bad_timings_are_refused_by_name(name, seconds):
    with pytest.raises(ValueError, match=name):
        timing.add_step_seconds(name, seconds)
