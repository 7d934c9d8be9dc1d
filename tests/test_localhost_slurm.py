"""The stand-ins in tests/localhost_slurm/ (`srun`, `scontrol`, `ray`, `sbatch`) that run
examples/slurm/run_vgpo.slurm for real on one machine, with Slurm "nodes" that are all localhost:
what each stand-in does, in seconds, without Ray.
"""

from __future__ import annotations

import os
import pathlib
import signal
import subprocess
import sys
import uuid

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
STANDINS = REPO / "tests" / "localhost_slurm"
NODELIST = "node[1-2]"


def standin_env(tmp: pathlib.Path, job_id: str) -> dict[str, str]:
    return {
        **os.environ,
        "PATH": f"{STANDINS}{os.pathsep}{os.environ['PATH']}",
        "SLURM_JOB_ID": job_id,
        "SLURM_JOB_NODELIST": NODELIST,
        "LOCALHOST_SLURM_LOG": str(tmp / "srun.log"),
        "PYTHON": sys.executable,
    }


@pytest.mark.parametrize("name", ["srun", "scontrol", "ray", "sbatch"])
def test_standins_are_shellcheck_clean(name):
    from test_launchers import shellcheck_binary

    result = subprocess.run([shellcheck_binary(), "--shell=bash", "--severity=style", STANDINS / name],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_scontrol_expands_ranges_and_lists():
    out = subprocess.run([STANDINS / "scontrol", "show", "hostnames", "gpu[1-3],login"],
                         capture_output=True, text=True, check=True).stdout
    assert out.split() == ["gpu1", "gpu2", "gpu3", "login"]
    bad = subprocess.run([STANDINS / "scontrol", "show", "nodes"], capture_output=True, text=True)
    assert bad.returncode == 2 and "show hostnames" in bad.stderr


def test_srun_runs_one_task_per_node_with_slurms_variables(tmp_path):
    env = standin_env(tmp_path, "job-a")
    every = subprocess.run(["srun", "--overlap", "--nodes=2", "--ntasks=2", "--ntasks-per-node=1", "sh", "-c",
                            'echo "$SLURMD_NODENAME $SLURM_NODEID"'], env=env, capture_output=True, text=True)
    assert every.returncode == 0, every.stderr
    assert sorted(every.stdout.splitlines()) == ["node1 0", "node2 1"]
    one = subprocess.run(["srun", "-w", "node2", "sh", "-c", 'echo "$SLURMD_NODENAME"; exit 3'],
                         env=env, capture_output=True, text=True)
    assert one.returncode == 3 and one.stdout.split() == ["node2"]
    assert (tmp_path / "srun.log").read_text().splitlines()[-1].startswith("node2 rc=3: sh -c")
    outside = subprocess.run(["srun", "-w", "node9", "true"], env=env, capture_output=True, text=True)
    assert outside.returncode == 1 and "node9" in outside.stderr


def _sleepers(env, node, n=2):
    return [subprocess.Popen(["sleep", "300"], env={**env, "SLURMD_NODENAME": node}) for _ in range(n)]


@pytest.mark.parametrize("force", [True, False])
def test_ray_stop_ends_this_jobs_processes_on_this_node_only(tmp_path, force):
    env = standin_env(tmp_path, f"job-{uuid.uuid4().hex}")
    on_node1, on_node2 = _sleepers(env, "node1"), _sleepers(env, "node2")
    other_job = _sleepers({**env, "SLURM_JOB_ID": "someone-else"}, "node1")
    try:
        stop = subprocess.run(["srun", "-w", "node1", "ray", "stop", *(["--force"] if force else [])],
                              env=env, capture_output=True, text=True, timeout=60)
        assert stop.returncode == 0, stop.stderr
        assert "stopped 2 processes" in stop.stdout
        for p in on_node1:
            assert p.wait(timeout=10) == (-signal.SIGKILL if force else -signal.SIGTERM)
        assert all(p.poll() is None for p in on_node2 + other_job)
    finally:
        for p in on_node1 + on_node2 + other_job:
            p.kill()
            p.wait()


def test_ray_start_keeps_nodes_apart(tmp_path):
    """`ray start` through the stand-in: the real CLI with per-node temp dir and free ports (argv shown by a fake PYTHON)."""
    fake_python = tmp_path / "python"
    fake_python.write_text('#!/usr/bin/env bash\nprintf "%s\\n" "$@"\n')
    fake_python.chmod(0o755)
    env = {**standin_env(tmp_path, "job-b"), "PYTHON": str(fake_python), "LOCALHOST_RAY_TEMP_DIR": "/tmp/r"}
    head = subprocess.run(["srun", "-w", "node1", "ray", "start", "--head", "--port=1234", "--block"],
                          env=env, capture_output=True, text=True, check=True).stdout.splitlines()
    assert head[:3] == ["-m", "ray.scripts.scripts", "start"]
    assert "--temp-dir=/tmp/r/node1" in head and "--include-dashboard=false" in head
    assert "--dashboard-agent-listen-port=0" in head and "--min-worker-port=0" in head
    worker = subprocess.run(["srun", "-w", "node2", "ray", "start", "--address=1.2.3.4:1234"],
                            env=env, capture_output=True, text=True, check=True).stdout.splitlines()
    assert "--temp-dir=/tmp/r/node2" in worker and "--include-dashboard=false" not in worker
    unset = subprocess.run(["ray", "start", "--head"], env=env, capture_output=True, text=True)
    assert unset.returncode != 0 and "srun" in unset.stderr  # not inside a Slurm task


# A batch script that asks to be requeued on its first two starts, then exits 7.
REQUEUEING_JOB = """#!/usr/bin/env bash
echo "start ${SLURM_RESTART_COUNT:-0} pid $$" >> "$JOB_LOG"
if [[ "${SLURM_RESTART_COUNT:-0}" -lt 2 ]]; then scontrol requeue "$SLURM_JOB_ID"; exit 0; fi
exit 7
"""


def _job(tmp, body, **env):
    script = tmp / "job.sh"
    script.write_text(body)
    script.chmod(0o755)
    environment = {**standin_env(tmp, "job-r"), "LOCALHOST_SLURM_STATE": str(tmp / "state"),
                   "JOB_LOG": str(tmp / "job.log"), **env}
    environment.pop("SLURM_RESTART_COUNT", None)
    return subprocess.run(["sbatch", "--wait", str(script)], env=environment, capture_output=True, text=True, timeout=60)


def test_sbatch_runs_a_requeued_job_again_like_slurm(tmp_path):
    result = _job(tmp_path, REQUEUEING_JOB)
    assert result.returncode == 7, result.stderr
    starts = (tmp_path / "job.log").read_text().splitlines()
    assert [line.split()[1] for line in starts] == ["0", "1", "2"]  # SLURM_RESTART_COUNT, as Slurm sets it
    assert (tmp_path / "srun.log").read_text().splitlines() == ["batch start=0 rc=0", "batch start=1 rc=0",
                                                                 "batch start=2 rc=7"]
    assert not (tmp_path / "state" / "batch.pid").exists()


def test_sbatch_stops_a_job_that_requeues_forever(tmp_path):
    result = _job(tmp_path, REQUEUEING_JOB, LOCALHOST_SLURM_MAX_RESTARTS="1")
    assert result.returncode == 1 and "requeued more than 1 times" in result.stderr
    assert len((tmp_path / "job.log").read_text().splitlines()) == 2


def test_sbatch_records_the_batch_shell_that_slurm_signals(tmp_path):
    """batch.pid is the batch script's own process (`--signal=B:USR1` reaches it and nothing else)."""
    body = """#!/usr/bin/env bash
trap 'echo got USR1 >> "$JOB_LOG"; exit 0' USR1
echo "start 0 pid $$" >> "$JOB_LOG"
while :; do sleep 0.1; done
"""
    import threading
    import time

    done = {}
    runner = threading.Thread(target=lambda: done.update(result=_job(tmp_path, body)))
    runner.start()
    pid_file = tmp_path / "state" / "batch.pid"
    deadline = time.monotonic() + 30
    while not ((tmp_path / "job.log").exists() and pid_file.exists()) and time.monotonic() < deadline:
        time.sleep(0.05)
    batch = int(pid_file.read_text())
    assert f"pid {batch}" in (tmp_path / "job.log").read_text()
    os.kill(batch, signal.SIGUSR1)
    runner.join(timeout=30)
    assert done["result"].returncode == 0 and "got USR1" in (tmp_path / "job.log").read_text()


def test_scontrol_requeues_only_its_own_job(tmp_path):
    env = {**standin_env(tmp_path, "job-s"), "LOCALHOST_SLURM_STATE": str(tmp_path)}
    other = subprocess.run(["scontrol", "requeue", "job-t"], env=env, capture_output=True, text=True)
    assert other.returncode == 1 and "only a job's own" in other.stderr and not (tmp_path / "requeue").exists()
    own = subprocess.run(["scontrol", "requeue", "job-s"], env=env, capture_output=True, text=True)
    assert own.returncode == 0 and (tmp_path / "requeue").exists()
