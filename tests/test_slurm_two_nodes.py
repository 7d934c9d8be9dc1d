"""examples/slurm/run_vgpo.slurm for real on one machine: two Slurm "nodes" on localhost (minutes).

The stand-ins in tests/localhost_slurm/ (`srun`, `scontrol`, `ray`; tests/test_localhost_slurm.py
pins them) execute what the launcher asks on this host, one Ray node per Slurm node, so the
launcher's own head start, worker join, plugin check on every node, GPU wait and `ray stop` trap all
run, and verl's main_ppo trains the CPU demo's model with trainer.nnodes=2 and one actor rank per node
(the CPU platform gives each Ray node one logical GPU), 2 VGPO steps with rollouts. The debugging
dump (vgpo_verl.plugin.dump) then shows what both ranks produced.

The job also outlives its allocation: it runs as a Slurm job (tests/localhost_slurm/sbatch) that
gets USR1 during step 1, as Slurm warns before a time limit; the trainer saves step 1 and stops, the
launcher stops Ray and requeues the job (`scontrol requeue`), the stand-in starts it again, and the
second start resumes from the checkpoint and trains step 2: the shuffled prompts of step 2, with
the saved weights (the scores of step 2 recomputed from the checkpoint).

Memory (the machine has 24 GiB for everything): two nodes double the actor ranks and the vLLM
replicas of the one-node demo. Kept small by: one rollout replica per node at tensor parallel 1
(TP 2 would need one vLLM spanning both Ray nodes), vLLM's KV cache at 1 GiB per replica
(VLLM_CPU_KVCACHE_SPACE, the CPU platform's default), no dashboard UI, no dataloader workers.
Peak PSS of every process of the run is measured and must stay under 22 GiB (measured: 17.8 GiB,
319 s wall, on a 2-core AMD EPYC, AVX2 only).

To watch it: `.venv/bin/python -m pytest -s tests/test_slurm_two_nodes.py` (docs/cluster.md).
"""

from __future__ import annotations

import os
import pathlib
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid

import pytest

from _dump_checks import expected_vgpo_advantages, load_dumps, merged_actor, probe_errors, similarity_errors

from vgpo_verl.plugin.checkpoints import TRACKER, problem, step_folder
from vgpo_verl.demo import run as demo_run
from vgpo_verl.demo import watchdog
from vgpo_verl.demo.memory import PeakMemory
from vgpo_verl.demo.summary import read_metrics, training_steps

REPO = pathlib.Path(__file__).resolve().parents[1]
SLURM = REPO / "examples" / "slurm" / "run_vgpo.slurm"
STANDINS = REPO / "tests" / "localhost_slurm"
NODES = ["node1", "node2"]
NODELIST = "node[1-2]"
RECIPE = "cpu_demo"
PEAK_PSS_LIMIT = 22 * 2**30
# The one-node demo's batch (4 prompts x 4 responses) split over two actor ranks: 8 rows each, and
# dynamic batching by tokens (up to 2 rows of <= 160 tokens per micro-batch), so each rank re-orders
# its rows and must put the scores back in row order.
MAX_TOKENS_PER_MICRO_BATCH = 2 * (demo_run.MAX_PROMPT_TOKENS + demo_run.MAX_RESPONSE_TOKENS)
PROGRESS = re.compile(r"nodes \(|step:\d|Error|Traceback|ray stop stand-in|did not reach|vgpo-verl:|received SIG|requeueing")
TRAINING_STARTED = "Training Progress:   0%"  # verl's progress bar, drawn as its loop starts step 1
DATA_SEED = 7
SAME_WEIGHTS = 1e-5  # largest score difference of one model computed twice (measured: ~1e-7)

# verl's defaults only; the demo's overrides come on the launcher's command line.
CPU_RECIPE = """\
# The CPU demo as a recipe for examples/slurm/run_vgpo.slurm (tests/test_localhost_slurm.py):
# verl's defaults here, vgpo_verl.demo.run.overrides() on the command line.
hydra:
  searchpath:
    - pkg://verl.trainer.config
defaults:
  - ppo_trainer
  - _self_
"""




def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def two_node_overrides(model_dir, train, val, dump_dir) -> list[str]:
    """The demo's overrides for two actor ranks (the launcher sets trainer.nnodes/n_gpus_per_node and
    the checkpoint directory), with the debugging dump on, a reward that is mixed within groups
    (parity_reward.py says why) and shuffled prompts (a resumed run must continue the shuffle)."""
    replaced = ("trainer.nnodes=", "trainer.n_gpus_per_node=", "reward.custom_reward_function.", "data.shuffle=")
    base = [o for o in demo_run.overrides(model_dir, train, val, "vgpo") if not o.startswith(replaced)]
    return base + [
        f"reward.custom_reward_function.path={STANDINS / 'parity_reward.py'}",
        "reward.custom_reward_function.name=compute_score",
        f"+algorithm.vgpo.dump_dir={dump_dir}",
        "data.shuffle=true",
        f"data.seed={DATA_SEED}",
        "actor_rollout_ref.actor.use_dynamic_bsz=true",
        f"actor_rollout_ref.actor.ppo_max_token_len_per_gpu={MAX_TOKENS_PER_MICRO_BATCH}",
        "actor_rollout_ref.rollout.log_prob_use_dynamic_bsz=true",
        f"actor_rollout_ref.rollout.log_prob_max_token_len_per_gpu={MAX_TOKENS_PER_MICRO_BATCH}",
        "trainer.test_freq=-1",  # no validation pass: the training steps are what crosses the nodes
        "trainer.experiment_name=tiny_qwen2_5_vl_shapes_two_nodes",
    ]


class ProcessPlacement:
    """Which Ray process titles ran on which Slurm node (sampled from /proc while the run goes)."""

    def __init__(self, run_id: str, interval_s: float = 2.0):
        self.run_id = run_id
        self.interval_s = interval_s
        self.titles: dict[str, set[str]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, name="two-node-placement", daemon=True)

    def _sample(self) -> None:
        while not self._stop.wait(self.interval_s):
            for pid in demo_run.pids_of_run(self.run_id):
                try:
                    environ = pathlib.Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
                    title = pathlib.Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode(errors="replace")
                except OSError:
                    continue
                node = next((e[len(b"SLURMD_NODENAME="):].decode() for e in environ
                             if e.startswith(b"SLURMD_NODENAME=")), None)
                if node and title.startswith("ray::"):
                    self.titles.setdefault(node, set()).add(title.split()[0])

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def _exit_on_sigterm(signum, frame):
    raise SystemExit(128 + signum)


LEFTOVER_WAIT_S = 90


def _wait_until_gone(run_id: str, timeout_s: float) -> list[str]:
    """This run's processes still alive after `timeout_s`, as 'pid state command' (the failure must say what)."""
    deadline = time.monotonic() + timeout_s
    while (alive := demo_run.pids_of_run(run_id)) and time.monotonic() < deadline:
        time.sleep(0.5)
    described = []
    for pid in alive:
        try:
            command = pathlib.Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            state = next(line for line in pathlib.Path(f"/proc/{pid}/status").read_text().splitlines()
                         if line.startswith("State:"))
        except OSError:  # it ended while being described
            continue
        described.append(f"{pid} {state} {command[:300]}")
    return described


@pytest.fixture(scope="module")
def two_node_run(tmp_path_factory):
    from vgpo_verl.demo.shapes_data import make_dataset
    from vgpo_verl.demo.tiny_model import build_tiny_vlm

    base = tmp_path_factory.mktemp("two_nodes")
    model_dir = build_tiny_vlm(base / "tiny_qwen2_5_vl")
    train, val = make_dataset(base / "shapes", demo_run.TRAIN_PROMPTS, demo_run.VAL_PROMPTS, seed=0)
    run_dir = base / "run"
    recipes = base / "recipes"
    for d in (run_dir, recipes):
        d.mkdir()
    (recipes / f"{RECIPE}.yaml").write_text(CPU_RECIPE)
    # Ray's socket paths must fit 107 bytes: a short temp root, not pytest's.
    ray_tmp = pathlib.Path(tempfile.mkdtemp(prefix="vgpo2n-", dir="/tmp"))

    run_id = uuid.uuid4().hex
    env = demo_run.run_environment(run_dir, run_id)  # the CPU platform, caches in run_dir, the run marker
    del env["VERL_FILE_LOGGER_PATH"]  # the launcher's: one metrics file per start of the job
    env.update({
        "PATH": f"{STANDINS}{os.pathsep}{env['PATH']}",
        "SLURM_JOB_ID": run_id,
        "SLURM_JOB_NODELIST": NODELIST,
        "SLURM_SUBMIT_DIR": str(REPO),
        "LOCALHOST_SLURM_LOG": str(run_dir / "srun.log"),
        "LOCALHOST_RAY_TEMP_DIR": str(ray_tmp),
        # the launcher's own knobs
        "PYTHON": sys.executable,
        "RAY": str(STANDINS / "ray"),
        "GPUS_PER_NODE": "1",
        "RAY_PORT": str(_free_port()),
        "HEAD_START_SECONDS": "5",
        "GPU_WAIT_SECONDS": "300",
        "VGPO_RECIPES_DIR": str(recipes),
        "VERL_USE_EXTERNAL_MODULES": "",
        "VGPO_RUN_DIR": str(run_dir / "job"),
        "LOCALHOST_SLURM_STATE": str(base / "slurm"),
    })
    # The launcher as a Slurm job (tests/localhost_slurm/sbatch): it is sent USR1 during step 1, and
    # runs again when it requeues itself.
    cmd = ["sbatch", "--wait", str(SLURM), RECIPE, *two_node_overrides(model_dir, train, val, run_dir / "dump")]
    print(f"\n[two nodes] run directory {run_dir}; launcher log {run_dir / 'launcher.log'}", flush=True)
    started = time.monotonic()
    leftovers: list[str] = []
    code = None
    # A SIGTERM to pytest (a CI timeout) unwinds through the cleanup below instead of skipping it.
    previous_sigterm = signal.signal(signal.SIGTERM, _exit_on_sigterm)
    with PeakMemory(demo_run.RUN_ID_VAR) as memory, ProcessPlacement(run_id) as placement, \
            open(run_dir / "launcher.log", "w") as log:
        memory.watch(run_id)
        proc = subprocess.Popen(cmd, cwd=run_dir, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                start_new_session=True)

        signalled = []

        def on_line(line: str) -> None:
            log.write(line)
            log.flush()
            if PROGRESS.search(line):
                print("  | " + line.rstrip()[:240], flush=True)
            if TRAINING_STARTED in line and not signalled:  # Slurm's warning before the time limit
                signalled.append(int((base / "slurm" / "batch.pid").read_text()))
                os.kill(signalled[0], signal.SIGUSR1)
                print(f"[two nodes] USR1 sent to the batch script (pid {signalled[0]}) during step 1", flush=True)

        try:
            # a dead Ray actor / vLLM engine or a silent run ends it at once (the demo's watchdog);
            # the stream ends when the trap has stopped the Ray daemons (they hold the pipe too)
            failure = watchdog.stream(proc.stdout, on_line, watchdog.Watchdog())
            if failure is not None:
                log.write(failure.report(run_dir / "launcher.log") + "\n")
                print(failure.report(run_dir / "launcher.log"), flush=True)
                code = proc.poll()  # None: still running, ended below
            else:
                code = proc.wait(timeout=120)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)  # the launcher's trap then stops Ray on both nodes
                try:
                    proc.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
            # What the launcher left (its trap should have left nothing), then the safety net.
            # 90 s, not 30: one CI run found two processes of the run still alive at 30 s (unnamed then;
            # the failure now says what they are); a stuck process still fails the test
            leftovers = _wait_until_gone(run_id, timeout_s=LEFTOVER_WAIT_S)
            demo_run.stop_leftovers(run_id)
            shutil.rmtree(ray_tmp, ignore_errors=True)
            signal.signal(signal.SIGTERM, previous_sigterm)
    wall_s = time.monotonic() - started
    print(f"[two nodes] exit {code}, wall {wall_s:.0f} s, peak PSS {memory.peak_bytes / 2**30:.2f} GiB", flush=True)
    for node, titles in sorted(placement.titles.items()):
        print(f"[two nodes] Ray processes on {node}: {', '.join(sorted(titles))}", flush=True)
    srun_log = (run_dir / "srun.log").read_text().splitlines() if (run_dir / "srun.log").exists() else []
    return {
        "code": code,
        "log": (run_dir / "launcher.log").read_text(),
        "srun": [line for line in srun_log if not line.startswith("batch ")],
        "batches": [line for line in srun_log if line.startswith("batch ")],  # the sbatch stand-in's runs
        "signalled": signalled,
        "metrics_per_start": [read_metrics(run_dir / "job" / f"metrics.{start}.jsonl") for start in (0, 1)],
        "metrics": {step: values for start in (0, 1)
                    for step, values in read_metrics(run_dir / "job" / f"metrics.{start}.jsonl").items()},
        "train": train,
        "peak_pss": memory.peak_bytes,
        "titles": placement.titles,
        "leftovers": leftovers,
        "run_dir": run_dir,
        "model_dir": model_dir,
    }


def _tasks(srun_lines: list[str], needle: str) -> dict[str, str]:
    """node -> exit status of the srun tasks whose command contains `needle`."""
    found = {}
    for line in srun_lines:
        node, rest = line.split(" ", 1)
        status, command = rest.split(": ", 1)
        if needle in command:
            found[node] = status
    return found


@pytest.mark.slow
def test_two_node_launcher_exits_zero(two_node_run):
    assert two_node_run["code"] == 0, two_node_run["log"][-8000:]


@pytest.mark.slow
def test_two_node_cluster_forms_from_the_launchers_own_commands(two_node_run):
    srun = two_node_run["srun"]
    # the plugin check ran, and passed, on every node before anything started
    assert _tasks(srun, "ADV_ESTIMATOR_REGISTRY") == {"node1": "rc=0", "node2": "rc=0"}
    # head on node1, worker on node2 (ended by the trap's ray stop: SIGKILL)
    assert set(_tasks(srun, "start --head")) == {"node1"}
    assert set(_tasks(srun, "start --address=")) == {"node2"}
    # the GPU wait saw both logical GPUs: it gives up with "did not reach" otherwise
    assert "did not reach" not in two_node_run["log"] and "nodes (2): node1 node2" in two_node_run["log"]
    # main_ppo ran on the head, and the EXIT trap stopped Ray on both nodes
    assert _tasks(srun, "verl.trainer.main_ppo") == {"node1": "rc=0"}
    assert _tasks(srun, "stop --force") == {"node1": "rc=0", "node2": "rc=0"}


@pytest.mark.slow
def test_two_node_training_has_an_actor_rank_on_each_node(two_node_run):
    titles = two_node_run["titles"]
    for node in NODES:
        # verl's actor rank: a WorkerDict (its colocated worker class) or the bare worker class
        workers = {t for t in titles.get(node, set()) if "WorkerDict" in t or "ActorRolloutRefWorker" in t}
        assert workers, f"no actor worker process seen on {node}: {sorted(titles.get(node, []))}"
    metrics = two_node_run["metrics"]
    assert training_steps(metrics) == list(range(1, demo_run.STEPS + 1)), sorted(metrics)
    for step in training_steps(metrics):
        assert metrics[step]["vgpo/no_visual_fraction"] == 0.0
        assert metrics[step]["vgpo/psi_min"] < metrics[step]["vgpo/psi_max"]


@pytest.mark.slow
def test_two_node_run_fits_in_memory(two_node_run):
    assert 0 < two_node_run["peak_pss"] < PEAK_PSS_LIMIT, f"peak PSS {two_node_run['peak_pss'] / 2**30:.2f} GiB"


@pytest.mark.slow
def test_two_node_run_leaves_no_process_behind(two_node_run):
    assert not two_node_run["leftovers"], f"still alive {LEFTOVER_WAIT_S} s after the launcher ended:\n" + "\n".join(two_node_run["leftovers"])


# ---------------------------------------------------------------------------------------------
# What verl trained on across the two ranks, from the dump (vgpo_verl.plugin.dump)


@pytest.fixture(scope="module")
def dumps(two_node_run):
    return load_dumps(two_node_run["run_dir"] / "dump", demo_run.STEPS)


@pytest.mark.slow
def test_two_node_advantages_are_grpo_times_alpha_times_psi(dumps):
    import torch

    for record in dumps:
        rows = len(record["uid"])
        assert rows == demo_run.BATCH_PROMPTS * demo_run.RESPONSES_PER_PROMPT and not record["is_padding"].any()
        assert record["has_visual"].all()
        mask = record["response_mask"]
        grpo, psi, alpha = expected_vgpo_advantages(record)
        stored = record["advantages"]
        assert stored[mask].abs().max() > 0, f"step {record['step']}: every advantage is 0"
        torch.testing.assert_close(stored, grpo * alpha[:, None] * psi, atol=1e-5, rtol=1e-5)
        assert not torch.allclose(stored[mask], grpo[mask])  # the weights did change what GRPO gives


@pytest.mark.slow
def test_two_node_scores_of_both_ranks_come_back_in_row_order(dumps, two_node_run, tmp_path):
    """Every row of step 1 (scored by the initial checkpoint: no update yet) against a recomputation.

    The batch is dispatched in halves, one per actor rank (one per node), and each rank re-orders its
    half by dynamic batching; a row whose scores came from another row (within a rank or across the
    two) fails, since no two rows' scores agree (checked, so a swap is observable).
    """
    import torch

    first = dumps[0]
    similarity, mask = first["similarity"], first["response_mask"]
    half = len(first["uid"]) // 2
    for i in range(half):
        for j in range(half, 2 * half):
            both = mask[i] & mask[j]
            assert not torch.allclose(similarity[i][both], similarity[j][both], atol=1e-3), (i, j)
    worst = similarity_errors(two_node_run["model_dir"], two_node_run["run_dir"] / "dump" / "step_000001.pt",
                              list(range(len(first["uid"]))), tmp_path)
    assert max(worst) < 1e-4, worst


# ---------------------------------------------------------------------------------------------
# The job outlived its allocation: USR1 during step 1 -> checkpoint, clean stop, requeue -> step 2


@pytest.mark.slow
def test_two_node_job_saves_stops_and_requeues_on_usr1_then_resumes_at_step_2(two_node_run):
    log = two_node_run["log"]
    assert two_node_run["signalled"], "verl's training loop never started"
    assert two_node_run["batches"] == ["batch start=0 rc=0", "batch start=1 rc=0"], log[-8000:]  # requeued once, then done
    assert "received SIGUSR1" in log and "vgpo-verl: stopped after step 1 as requested" in log
    assert "requeueing job" in log and log.count("requeueing job") == 1
    assert "vgpo-verl: resuming from" in log and "global_step_1" in log
    # each start logged its own steps: 1 before the stop, 2 after the requeue (none twice)
    assert [training_steps(m) for m in two_node_run["metrics_per_start"]] == [[1], [2]]
    assert two_node_run["metrics_per_start"][1][2]["training/global_step"] == 2
    checkpoints = two_node_run["run_dir"] / "job" / "checkpoints"
    assert problem(step_folder(checkpoints, 1)) is None and (checkpoints / TRACKER).read_text() == "1"
    assert not step_folder(checkpoints, 2).exists()  # save_freq=-1: the stop's save is the only one


def _expected_batches(train_parquet: pathlib.Path) -> list[list[int]]:
    """The dataset rows of steps 1 and 2 in an uninterrupted run: verl's own sampler and stateful
    dataloader (verl.trainer.ppo.utils.create_rl_sampler) over the train set, as the trainer builds them."""
    import pandas as pd
    from omegaconf import OmegaConf
    from torchdata.stateful_dataloader import StatefulDataLoader
    from verl.trainer.ppo.utils import create_rl_sampler

    rows = list(range(len(pd.read_parquet(train_parquet))))
    sampler = create_rl_sampler(OmegaConf.create({"shuffle": True, "seed": DATA_SEED}), rows)
    loader = StatefulDataLoader(rows, batch_size=demo_run.BATCH_PROMPTS, drop_last=True, sampler=sampler)
    return [batch.tolist() for _, batch in zip(range(demo_run.STEPS), loader)]


@pytest.mark.slow
def test_two_node_resumed_step_trains_the_next_prompts_of_the_shuffle(dumps, two_node_run):
    expected = _expected_batches(two_node_run["train"])
    assert expected[0] != expected[1]  # a restarted (not restored) shuffle would repeat step 1's prompts
    for record, rows in zip(dumps, expected):
        assert sorted(set(record["index"])) == sorted(rows), (record["step"], record["index"], rows)


@pytest.mark.slow
def test_two_node_resumed_policy_is_the_saved_one(dumps, two_node_run, tmp_path):
    """Step 2's scores (the resumed actor's forward, both ranks) recomputed from the step-1 checkpoint's
    weights (its two FSDP shards joined) agree to float precision; from the initial weights they do not."""
    actor = two_node_run["run_dir"] / "job" / "checkpoints" / "global_step_1" / "actor"
    saved = merged_actor(actor, tmp_path / "saved")
    dump = two_node_run["run_dir"] / "dump" / "step_000002.pt"
    rows = list(range(0, len(dumps[1]["uid"]), 3))
    from_saved, from_initial = (errors["similarity"] for errors in probe_errors(
        dump, rows, tmp_path, [(saved, 0), (two_node_run["model_dir"], 0)]))
    print(f"\n[two nodes] largest step-2 score difference per row, from the saved weights {from_saved}, "
          f"from the initial ones {from_initial}")
    assert max(from_saved) < SAME_WEIGHTS, from_saved
    assert min(from_initial) > 10 * SAME_WEIGHTS, from_initial  # the check can tell the two apart
