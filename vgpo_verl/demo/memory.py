"""Peak memory of a whole run (all its processes together), sampled from /proc while it runs.

Memory is counted as PSS (proportional set size): pages shared between processes (torch's
libraries, Ray's object store) are split among them, so the sum is what the run really occupies.
"""

from __future__ import annotations

import pathlib
import threading

from vgpo_verl.demo.run import pids_of_run


def pss_bytes(pid: int) -> int:
    """PSS of one process, 0 if it is gone or unreadable."""
    try:
        for line in pathlib.Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


class PeakMemory:
    """`with PeakMemory(...) as m: ... m.watch(run_id) ...`; then `m.peak_bytes`."""

    def __init__(self, run_id_var: str, interval_s: float = 1.0):
        self.run_id_var = run_id_var
        self.interval_s = interval_s
        self.peak_bytes = 0
        self._run_id: str | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, name="demo-peak-memory", daemon=True)

    def watch(self, run_id: str) -> None:
        self._run_id = run_id

    def _sample(self) -> None:
        while not self._stop.wait(self.interval_s):
            if self._run_id is not None:
                total = sum(pss_bytes(pid) for pid in pids_of_run(self._run_id))
                self.peak_bytes = max(self.peak_bytes, total)

    def __enter__(self) -> "PeakMemory":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
