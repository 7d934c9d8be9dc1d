"""`python -m vgpo_verl.demo` end to end: real verl PPO with the vgpo estimator on this CPU (minutes).

One run of the demo as a user starts it (`make demo`, with `--run-dir`: a checkpoint after every step;
conftest's `checkpointed_demo`, shared with tests/test_demo_methods.py), into a temporary cache directory, then
checks what the demo promises: exit 0, two training steps with a reward, a validation pass, the
`vgpo/` metrics on every step computed from image tokens (no response without a visual token),
non-zero advantages (the warm start gets some answers right), and no process of the run left behind.
A second run has its vLLM engine killed after the first step and must end quickly with the cause named.

The same run has the debugging dump on (`algorithm.vgpo.dump_dir`, vgpo_verl.plugin.dump), and the
fidelity tests check from it what verl actually trained on: the advantages it stored equal verl's
GRPO advantage x alpha x psi recomputed with vgpo_verl.methods.vgpo from the dumped scores, and the
dumped scores of a few responses equal a plain-transformers recomputation from the warm start
(so the row / uid / response alignment survived Ray, the TransferQueue and the micro-batching).
"""

from __future__ import annotations

import math
import os
import pathlib
import signal
import subprocess
import time

import pytest

from _demo_cache import demo_command, demo_env, invocation_metrics, seeded_demo_cache, stop
from _dump_checks import expected_vgpo_advantages, load_dumps, similarity_errors

from vgpo_verl.plugin.checkpoints import TRACKER, problem, step_folder
from vgpo_verl.demo.run import RESPONSES_PER_PROMPT, RUN_ID_VAR, STEPS, pids_of_run


@pytest.fixture(scope="module")
def demo_run(checkpointed_demo):
    _cache, run_dir, proc, leftovers = checkpointed_demo
    return proc, invocation_metrics(run_dir), leftovers


@pytest.mark.slow
def test_demo_exits_zero_with_a_summary(demo_run):
    proc, _, _ = demo_run
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-3000:]
    assert f"training steps      {STEPS} of {STEPS}" in proc.stdout
    assert "INCOMPLETE" not in proc.stdout
    assert proc.stdout.count("vgpo/focus_by_position (5ths)") == STEPS  # the live forgetting curve, per step


@pytest.mark.slow
def test_demo_trains_two_steps_and_validates(demo_run):
    _, metrics, _ = demo_run
    steps = sorted(s for s, values in metrics.items() if "critic/score/mean" in values)
    assert steps == list(range(1, STEPS + 1))
    for step in steps:
        assert 0.0 <= metrics[step]["critic/score/mean"] <= 1.0  # boxed-answer accuracy
    assert any(k.startswith("val-core/") for values in metrics.values() for k in values)


@pytest.mark.slow
def test_demo_vgpo_metrics_come_from_image_tokens(demo_run):
    _, metrics, _ = demo_run
    for step in range(1, STEPS + 1):
        vgpo = {k: v for k, v in metrics[step].items() if k.startswith("vgpo/")}
        assert vgpo, f"step {step} has no vgpo/ metrics"
        assert vgpo["vgpo/no_visual_fraction"] == 0.0
        # every response was scored against its image: similarities are real cosines, weights vary
        assert math.isfinite(vgpo["vgpo/similarity_mean"]) and -1.0 <= vgpo["vgpo/similarity_mean"] <= 1.0
        assert vgpo["vgpo/psi_min"] < vgpo["vgpo/psi_max"]


@pytest.mark.slow
def test_demo_logs_what_our_code_cost_each_step(demo_run):
    """vgpo_verl.plugin.timing's keys next to verl's timings: the scoring hook's seconds from the actor worker,
    the estimator's from the driver, their share of verl's step time; the summary prints them."""
    proc, metrics, _ = demo_run
    for step in range(1, STEPS + 1):
        values = metrics[step]
        ours = {k: values.get(k) for k in ("timing_s/vgpo_score", "timing_s/vgpo_weights")}
        assert all(v is not None and v >= 0 for v in ours.values()), ours
        assert "timing_s/vppo_aug_forward" not in values  # no perturbed forward in a vgpo run
        share = values.get("perf/our_share_of_step")
        assert share == pytest.approx(sum(ours.values()) / values["timing_s/step"])
        assert 0 < share < 1  # our seconds are part of the step
    assert proc.stdout.count("our code ") == STEPS


@pytest.mark.slow
def test_demo_advantages_are_not_all_zero(demo_run):
    proc, metrics, _ = demo_run
    for step in range(1, STEPS + 1):
        assert metrics[step]["critic/advantages/max"] > 0 > metrics[step]["critic/advantages/min"], metrics[step]
        assert "critic/advantages/max" in proc.stdout  # the summary shows them


@pytest.mark.slow
def test_demo_leaves_no_process_behind(demo_run):
    _, _, leftovers = demo_run
    assert not leftovers


def _our_keys(values: dict) -> set[str]:
    return {k for k in values if k.startswith(("vgpo/", "timing_s/vgpo_")) or k == "perf/our_share_of_step"}


@pytest.mark.slow
def test_demo_logs_every_key_and_the_chart_to_wandb_and_tensorboard(checkpointed_demo):
    """trainer.logger=[console,file,wandb,tensorboard], W&B offline: each holds every vgpo/*, timing_s/vgpo_*
    and perf/our_share_of_step key of each step (as verl's file logger has them), and the forgetting chart
    (vgpo_verl.plugin.tracking, the demo charts every step): W&B's table, TensorBoard's image."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from vgpo_verl.plugin.tracking import CHART_KEY
    from vgpo_verl.report.runs import read_wandb_run

    _, run_dir, _, _ = checkpointed_demo
    (invocation,) = sorted(run_dir.glob("runs/*"))
    metrics = invocation_metrics(run_dir)
    (wandb_run,) = sorted(invocation.glob("wandb/offline-run-*"))
    in_wandb = read_wandb_run(next(wandb_run.glob("run-*.wandb")))
    events = EventAccumulator(str(invocation / "tensorboard"), size_guidance={"images": 0, "scalars": 0})
    events.Reload()
    steps = list(range(1, STEPS + 1))
    for step in steps:
        ours = _our_keys(metrics[step])
        assert {"vgpo/psi_mean", "timing_s/vgpo_score", "perf/our_share_of_step"} <= ours
        assert {k: in_wandb[step].get(k) for k in ours} == pytest.approx({k: metrics[step][k] for k in ours})
    for key in set().union(*(_our_keys(metrics[step]) for step in steps)):
        assert [e.step for e in events.Scalars(key)] == steps, key
    assert [image.step for image in events.Images(CHART_KEY)] == steps
    tables = sorted(wandb_run.glob("files/media/table/vgpo/forgetting_curve_table_*.table.json"))
    assert len(tables) == STEPS
    # W&B's service connection closed with the run (vgpo_verl.plugin.tracking), not by its atexit hook
    assert "Connection lost" not in (invocation / "train.log").read_text()


@pytest.mark.slow
def test_demo_ends_with_its_report_page(checkpointed_demo):
    from PIL import Image

    _, run_dir, proc, _ = checkpointed_demo
    (line,) = [line for line in proc.stdout.splitlines() if line.startswith("report (PNG)")]
    page = pathlib.Path(line.split(None, 2)[2])
    assert page.parent.parent == run_dir / "runs" and page.name == "report.png"
    with Image.open(page) as image:
        assert image.size == (1600, 900)
    assert "W&B (offline)" in proc.stdout and "TensorBoard" in proc.stdout


@pytest.mark.slow
def test_demo_run_dir_holds_a_complete_checkpoint_per_step(checkpointed_demo):
    _, run_dir, proc, _ = checkpointed_demo
    checkpoints = run_dir / "checkpoints"
    assert f"checkpoints after every step: {checkpoints}" in proc.stdout and "resumed from" not in proc.stdout
    for step in range(1, STEPS + 1):
        assert problem(step_folder(checkpoints, step)) is None, step
    assert (checkpoints / TRACKER).read_text() == str(STEPS)


def _run_id_of(demo: subprocess.Popen) -> str | None:
    """The run id that the demo gave its main_ppo (a direct child of the demo process)."""
    for entry in pathlib.Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) == demo.pid:
                for item in (entry / "environ").read_bytes().split(b"\0"):
                    if item.startswith(f"{RUN_ID_VAR}=".encode()):
                        return item.split(b"=", 1)[1].decode()
        except OSError:
            continue
    return None


def _engine_core_pids(run_id: str) -> list[int]:
    """vLLM EngineCore processes of this run only (their process title is "VLLM::EngineCore...")."""
    found = []
    for pid in pids_of_run(run_id):
        try:
            if b"EngineCore" in pathlib.Path(f"/proc/{pid}/cmdline").read_bytes():
                found.append(pid)
        except OSError:  # gone meanwhile
            continue
    return found


KILL_TO_EXIT_LIMIT_S = 120  # issue 9: a killed vLLM engine ends the demo, with a clear message, within 2 min


@pytest.mark.slow
def test_demo_ends_fast_when_its_vllm_engine_is_killed(demo_assets, tmp_path):
    """Kill the rollout engine after the first training step (the next weight sync and rollouts need
    it; before the watchdog the trainer waited forever): the demo must stop the run, name the dead
    engine, exit non-zero and leave no process."""
    import threading

    proc = subprocess.Popen(demo_command(seeded_demo_cache(demo_assets, tmp_path / "cache")), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=demo_env())
    lines: list[str] = []
    first_step = threading.Event()

    def read():
        for line in proc.stdout:
            lines.append(line)
            if "step:1" in line:
                first_step.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        assert first_step.wait(timeout=1500), "".join(lines[-60:])
        run_id = _run_id_of(proc)
        assert run_id, "the demo's main_ppo process was not found"
        engines = _engine_core_pids(run_id)
        assert engines, "no EngineCore process found:\n" + "".join(lines[-60:])
        for pid in engines:
            os.kill(pid, signal.SIGKILL)
        killed_at = time.monotonic()
        try:
            proc.wait(timeout=KILL_TO_EXIT_LIMIT_S)
        except subprocess.TimeoutExpired:
            pytest.fail(f"the demo still ran {KILL_TO_EXIT_LIMIT_S} s after its EngineCore was killed:\n"
                        + "".join(lines[-60:]))
        took = time.monotonic() - killed_at
    finally:
        stop(proc)
    reader.join(timeout=30)
    out = "".join(lines)
    print(f"\nEngineCore {engines} killed; the demo exited {proc.returncode} after {took:.0f} s; its report:\n"
          + "\n".join(l for l in out.splitlines() if l.startswith(("[demo] run stopped", "[demo] root", "  ! "))))
    assert proc.returncode != 0
    assert "[demo] run stopped: the vLLM engine died" in out, out[-6000:]
    assert pids_of_run(run_id) == []


# ----------------------------------------------------------------------------------------------
# Fidelity: what verl trained on, from the dump of the same run
# ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def dumps(checkpointed_demo):
    return load_dumps(checkpointed_demo[1] / "dump", STEPS)


@pytest.mark.slow
def test_dump_advantages_are_grpo_times_alpha_times_psi(dumps):
    import torch

    for record in dumps:
        mask = record["response_mask"]
        assert record["has_visual"].all() and not record["is_padding"].any()
        assert len(set(record["uid"])) * RESPONSES_PER_PROMPT == len(record["uid"])
        grpo, psi, alpha = expected_vgpo_advantages(record)
        stored = record["advantages"]
        assert stored[mask].abs().max() > 0, f"step {record['step']}: every advantage is 0"
        assert (stored[~mask] == 0).all()
        torch.testing.assert_close(stored, grpo * alpha[:, None] * psi, atol=1e-5, rtol=1e-5)
        assert (psi[mask] != 1).any(), f"step {record['step']}: psi is 1 everywhere"
        # the re-weighting changed what GRPO alone would have trained on
        assert not torch.allclose(stored[mask], grpo[mask])


@pytest.mark.slow
def test_dumped_similarity_matches_a_plain_transformers_recomputation(dumps, checkpointed_demo, tmp_path):
    # step 1 scores come from the warm start itself (no update yet); rows from every group
    cache, run_dir, _, _ = checkpointed_demo
    first = dumps[0]
    rows = list(range(0, len(first["uid"]), 3))
    worst = similarity_errors(cache / "warm_start", run_dir / "dump" / "step_000001.pt", rows, tmp_path)
    assert max(worst) < 1e-4, worst


def test_summary_prints_the_forgetting_curve_on_one_line_with_gaps_marked():
    from vgpo_verl.demo.summary import focus_line

    values = {"vgpo/focus_by_position/bin_0": 0.5, "vgpo/focus_by_position/bin_2": -0.25, "vgpo/psi_mean": 1.0}
    assert focus_line(values) == "0.500 - -0.250"  # bin 1 not logged (no response reached it)
    assert focus_line({"critic/score/mean": 0.5}) is None  # DAPO: no similarity, no line
