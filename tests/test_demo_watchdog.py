"""The demo's watchdog (vgpo_verl.demo.watchdog): which log lines end a run, after how long, and what
it reports as the root cause. ISSUE_9_LOG rebuilds the failure of issue 9 (an AMX Xeon run that
hung for 17 minutes) from the messages the issue quotes, in the line format Ray gives main_ppo's
output; the other fatal lines are the messages vLLM 0.30 / Ray 2.60 / Hydra print (source strings).
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
import time

import pytest

from vgpo_verl.demo import watchdog

# issue 9: vLLM's EngineCore died in verl's weight sync, the trainer then waited forever (rebuilt)
ISSUE_9_LOG = [
    "(TaskRunner pid=2141) step:1 - actor/pg_loss:0.01 - critic/score/mean:0.25\n",
    "(vLLMHttpServer pid=2877) ERROR 11-27 09:12:44 [core.py:1368] EngineCore encountered a fatal error.\n",
    "(vLLMHttpServer pid=2877) Traceback (most recent call last):\n",
    '(vLLMHttpServer pid=2877)   File ".../vllm/model_executor/layers/linear.py", line 447, in weight_loader\n',
    "(vLLMHttpServer pid=2877) AttributeError: 'Parameter' object has no attribute 'weight_loader'\n",
    "(vLLMHttpServer pid=2877) During handling of the above exception, another exception occurred:\n",
    "(vLLMHttpServer pid=2877) BufferError: cannot close exported pointers exist\n",
    "(vLLMHttpServer pid=2877) BufferError: cannot close exported pointers exist [repeated 2x across cluster]\n",
]


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


@pytest.mark.parametrize("line, reason", [
    ("(vLLMHttpServer pid=2877) ERROR 11-27 09:12:44 [core.py:1368] EngineCore encountered a fatal error.",
     "the vLLM engine died"),
    # copied from the real run of tests/test_demo.py's kill test (Ray's colour codes included)
    ("\x1b[36m(vLLMHttpServer pid=10477)\x1b[0m WARNING 11-29 10:23:26 [core_client.py:791] [shutdown] MPClient: "
     "engine core exited unexpectedly; starting cleanup", "the vLLM engine died"),
    ("vllm.v1.engine.exceptions.EngineDeadError: EngineCore encountered an issue. See stack trace (above) for "
     "the root cause.", "the vLLM engine died"),
    ("ray.exceptions.ActorDiedError: The actor died unexpectedly before finishing this task.",
     "a Ray actor or worker died"),
    ("(raylet) A worker died or was killed while executing a task by an unexpected system error.",
     "a Ray actor or worker died"),
    ("Error executing job with overrides: ['algorithm.adv_estimator=vgpo']", "the trainer raised an exception"),
])
def test_fatal_lines_are_recognised(line, reason):
    assert watchdog.classify(watchdog.strip_ray_prefix(line)) == reason


@pytest.mark.parametrize("line", [
    "(TaskRunner pid=2141) step:1 - actor/pg_loss:0.01 - critic/score/mean:0.25",
    "(vLLMHttpServer pid=2877) INFO 11-29 08:55:01 [loggers.py:259] Engine 000: Avg prompt throughput: 0.0 "
    "tokens/s, Avg generation throughput: 0.0 tokens/s, Running: 0 reqs",
    "(WorkerDict pid=2300) UserWarning: TypedStorage is deprecated",
    "Training Progress:  50%|█████     | 1/2 [02:10<02:10, 130.0s/it]",
])
def test_ordinary_lines_are_not_fatal(line):
    assert watchdog.classify(watchdog.strip_ray_prefix(line)) is None


def test_issue_9_run_is_stopped_with_its_root_cause():
    clock = Clock()
    dog = watchdog.Watchdog(clock=clock)
    for line in ISSUE_9_LOG[:2]:
        dog.see(line)
    assert dog.check() is None  # the traceback's last lines get FATAL_GRACE_S to arrive
    for line in ISSUE_9_LOG[2:]:
        dog.see(line)
    clock.now += watchdog.FATAL_GRACE_S
    failure = dog.check()
    assert failure is not None and failure.reason == "the vLLM engine died"
    assert failure.cause_lines == [
        "AttributeError: 'Parameter' object has no attribute 'weight_loader'",
        "BufferError: cannot close exported pointers exist",
    ]
    report = failure.report("train.log")
    assert "run stopped: the vLLM engine died" in report and "weight_loader" in report
    assert len(report.splitlines()) == 4  # the verdict, the heading, two causes: not the traceback


def test_silence_is_measured_from_the_last_progress_line():
    clock = Clock()
    dog = watchdog.Watchdog(silence_s=600, clock=clock)
    clock.now = 500
    dog.see("(TaskRunner pid=1) step:1 - actor/pg_loss:0.01\n")
    clock.now = 1000
    assert dog.check() is None
    # a stalled run's chatter is not progress
    dog.see("(autoscaler +5m2s) Warning: The following resource request cannot be scheduled right now: "
            "{'GPU': 1.0}\n")
    dog.see("(vLLMHttpServer pid=9) INFO Engine 000: Avg prompt throughput: 0.0 tokens/s\n")
    clock.now = 1100
    failure = dog.check()
    assert failure is not None and failure.reason == "no progress line for 600 s" and failure.trigger == ""


def test_stream_returns_when_the_output_ends_and_the_exit_is_explained_after():
    seen = []
    healthy = io.BytesIO(b"step:1\nstep:2\n")
    assert watchdog.stream(healthy, seen.append, watchdog.Watchdog()) is None
    assert seen == ["step:1\n", "step:2\n"]
    dog = watchdog.Watchdog()
    assert watchdog.stream(io.BytesIO("".join(ISSUE_9_LOG).encode()), lambda line: None, dog) is None
    assert dog.exit_failure(1).reason == "the vLLM engine died"
    crashed = watchdog.Watchdog()
    crashed.see("(TaskRunner pid=5) KeyError: 'vgpo'\n")
    failure = crashed.exit_failure(1)
    assert failure.reason == "main_ppo exited with code 1" and failure.cause_lines == ["KeyError: 'vgpo'"]


def test_stream_fires_on_a_live_process_that_stalls_after_a_fatal_line():
    """A real pipe that stays open (the trainer waiting forever): the watchdog fires after the grace."""
    script = "import sys, time; print('EngineCore encountered a fatal error.', flush=True); time.sleep(60)"
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE)
    try:
        started = time.monotonic()
        failure = watchdog.stream(proc.stdout, lambda line: None, watchdog.Watchdog(fatal_grace_s=1.0), poll_s=0.2)
        assert failure is not None and failure.reason == "the vLLM engine died"
        assert proc.poll() is None  # it fired while the process was still alive
        assert time.monotonic() - started < 30
    finally:
        proc.kill()
        proc.wait()


def test_run_verl_stops_a_dead_run_and_exits_non_zero(tmp_path, monkeypatch, capsys):
    """run_verl with a stand-in for main_ppo that logs an engine death and then hangs."""
    from vgpo_verl.demo import run

    fake = tmp_path / "fake_main_ppo.py"
    fake.write_text(
        "import time\n"
        f"for line in {ISSUE_9_LOG!r}:\n"
        "    print(line, end='', flush=True)\n"
        "time.sleep(120)\n"  # bounded even if the watchdog never fires
    )
    monkeypatch.setattr(run, "run_environment", lambda run_dir, run_id: {**os.environ, run.RUN_ID_VAR: run_id})
    monkeypatch.setattr(run.sys, "executable", sys.executable)
    real_popen = subprocess.Popen

    def popen(cmd, **kwargs):
        return real_popen([sys.executable, str(fake)], **kwargs)

    monkeypatch.setattr(run.subprocess, "Popen", popen)
    started = time.monotonic()
    code, run_id = run.run_verl(tmp_path, [])
    assert code != 0
    assert time.monotonic() - started < 60
    out = capsys.readouterr().out
    assert "run stopped: the vLLM engine died" in out
    assert "AttributeError: 'Parameter' object has no attribute 'weight_loader'" in out
    assert run.pids_of_run(run_id) == []
    assert "EngineCore encountered a fatal error" in (tmp_path / "train.log").read_text()
