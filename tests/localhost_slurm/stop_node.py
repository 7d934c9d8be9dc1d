"""`ray stop [--force]` for one Slurm "node" of tests/localhost_slurm: ends every process of this job
($SLURM_JOB_ID) on this node ($SLURMD_NODENAME), found by those two variables in its environment
(Ray's daemons and workers, and vLLM's processes, inherit them from `ray start`), except this
process and its ancestors (the srun task running it). SIGKILL with --force, else SIGTERM and, after
--grace-period seconds (default 16, like Ray's), SIGKILL. Returns once they are gone.
"""

import argparse
import os
import signal
import sys
import time


def _environ(pid: int) -> list[bytes]:
    with open(f"/proc/{pid}/environ", "rb") as f:
        return f.read().split(b"\0")


def _ancestors() -> set[int]:
    pids, pid = set(), os.getpid()
    while pid > 1:
        pids.add(pid)
        with open(f"/proc/{pid}/stat") as f:
            pid = int(f.read().rsplit(")", 1)[1].split()[1])
    return pids


def node_processes(job: str, node: str) -> list[int]:
    wanted = {f"SLURM_JOB_ID={job}".encode(), f"SLURMD_NODENAME={node}".encode()}
    mine = _ancestors()
    found = []
    for name in os.listdir("/proc"):
        if name.isdigit() and int(name) not in mine:
            try:
                if wanted <= set(_environ(int(name))):
                    found.append(int(name))
            except OSError:  # gone, or not ours to read
                continue
    return found


def _signal_all(pids: list[int], sig: int) -> None:
    for pid in pids:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass


def main() -> int:
    parser = argparse.ArgumentParser(prog="ray stop (localhost Slurm stand-in)")
    parser.add_argument("-f", "--force", action="store_true")
    parser.add_argument("-g", "--grace-period", type=float, default=16)
    args = parser.parse_args()
    job, node = os.environ.get("SLURM_JOB_ID"), os.environ.get("SLURMD_NODENAME")
    if not job or not node:
        print("ray stop stand-in: SLURM_JOB_ID and SLURMD_NODENAME must be set (run it through srun)", file=sys.stderr)
        return 2
    stopped: set[int] = set()
    started = time.monotonic()
    # Signalled again each round: a daemon may start a process while its siblings are going down.
    while pids := node_processes(job, node):
        waited = time.monotonic() - started
        if waited > args.grace_period + 10:
            print(f"ray stop stand-in: processes {pids} of job {job} on {node} survive SIGKILL", file=sys.stderr)
            return 1
        _signal_all(pids, signal.SIGKILL if args.force or waited > args.grace_period else signal.SIGTERM)
        stopped.update(pids)
        time.sleep(0.2)
    pids = sorted(stopped)
    print(f"ray stop stand-in: stopped {len(pids)} processes of job {job} on {node}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
