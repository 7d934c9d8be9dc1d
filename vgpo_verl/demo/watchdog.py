"""Ends a demo run that has died or stalled instead of waiting on it (verl's trainer can wait forever
on a Ray actor or a vLLM engine that is gone).

`Watchdog` reads main_ppo's output line by line and gives a `Failure` when
- a line says a process the run needs is dead: vLLM's EngineCore ("EngineCore encountered a fatal
  error", "engine core exited unexpectedly", EngineDeadError), a Ray actor or worker (ActorDiedError,
  "The actor died", "A worker died or was killed"), or the trainer's top-level exception (Hydra's
  "Error executing job"); it waits FATAL_GRACE_S more for the traceback's last lines, then fires;
- or no progress line came for SILENCE_S seconds (5 min). A progress line is any output line
  except periodic chatter that a stalled run may keep printing (Ray's autoscaler "cannot be
  scheduled" warnings, vLLM's throughput stats, TransferQueue's operation statistics).

The failure names the root cause: the exception lines ("SomeError: message", the last line of each
traceback), in order of first appearance, without Ray's process prefixes and without repeats.
"""

from __future__ import annotations

import collections
import dataclasses
import queue
import re
import threading
import time

# A healthy demo is never quiet for long: on a 2-core AVX2 EPYC the longest stretch between two
# progress lines was 33 s (vLLM's start-up and the first update included; 7.1 min run). Five
# minutes is about ten times that, for slower or busier machines, and still ends a stalled run
# long before a CI job limit.
SILENCE_S = 300.0
# Time for the rest of a traceback to arrive after its first fatal line.
FATAL_GRACE_S = 5.0
MAX_CAUSE_LINES = 12

FATAL = (
    (re.compile(r"EngineCore encountered a fatal error|engine core exited unexpectedly|EngineDeadError"
                r"|Engine core process .* died|Engine core initialization failed"), "the vLLM engine died"),
    (re.compile(r"ActorDiedError|ActorUnavailableError|The actor died|The worker died unexpectedly"
                r"|A worker died or was killed|WorkerCrashedError"), "a Ray actor or worker died"),
    (re.compile(r"Error executing job with overrides"), "the trainer raised an exception"),
)
NOT_PROGRESS = re.compile(r"\(autoscaler|cannot be scheduled right now|Avg prompt throughput|Avg generation throughput"
                          r"|Per-operation statistics")
# Ray colours its process prefixes, and a vLLM subprocess adds its own after the Ray actor's:
# "\x1b[36m(vLLMHttpServer pid=9, ip=10.0.0.1)\x1b[0m (EngineCore pid=12) ...", "[repeated 3x across cluster]"
ANSI = re.compile(r"\x1b\[[0-9;]*m")
RAY_PREFIX = re.compile(r"^\s*(?:\([\w.:-]+ pid=\d+(?:, ip=[\d.]+)?\)\s*)+")
RAY_REPEAT = re.compile(r"\s*\[repeated \d+x across cluster\]\s*$")
# The last line of a Python traceback: "SomeError: message", "pkg.mod.SomeException", "ray::X ... Error: ..."
EXCEPTION_LINE = re.compile(r"^(?:[\w.]+\.)?\w*(?:Error|Exception|Exit|Interrupt)\b(?::.*)?$")


@dataclasses.dataclass
class Failure:
    reason: str           # what died or stalled, in words
    trigger: str          # the log line that showed it ("" for a silence)
    cause_lines: list[str]  # the exception lines behind it, oldest first

    def report(self, log_path) -> str:
        lines = [f"[demo] run stopped: {self.reason}" + (f" (\"{self.trigger[:200]}\")" if self.trigger else "")]
        if self.cause_lines:
            lines.append(f"[demo] root cause, from {log_path}:")
            lines += [f"  ! {line}" for line in self.cause_lines]
        else:
            lines.append(f"[demo] no exception in the output; the end of {log_path} shows where it stopped")
        return "\n".join(lines)


def strip_ray_prefix(line: str) -> str:
    return RAY_REPEAT.sub("", RAY_PREFIX.sub("", ANSI.sub("", line.rstrip("\n")))).strip()


def classify(line: str) -> str | None:
    """What the line says has died (a FATAL reason), or None."""
    for pattern, reason in FATAL:
        if pattern.search(line):
            return reason
    return None


class Watchdog:
    """Feed it every output line (`see`); ask `check()` at any time whether the run must be stopped."""

    def __init__(self, silence_s: float = SILENCE_S, fatal_grace_s: float = FATAL_GRACE_S, clock=time.monotonic):
        self.silence_s = silence_s
        self.fatal_grace_s = fatal_grace_s
        self._clock = clock
        self._last_progress = clock()
        self._fatal: tuple[float, str, str] | None = None  # (seen at, reason, line)
        self._causes: collections.OrderedDict[str, None] = collections.OrderedDict()

    def see(self, line: str) -> None:
        text = strip_ray_prefix(line)
        if not text:
            return
        if not NOT_PROGRESS.search(text):
            self._last_progress = self._clock()
        if EXCEPTION_LINE.match(text):
            self._causes[text[:300]] = None
        if self._fatal is None:
            reason = classify(text)
            if reason is not None:
                self._fatal = (self._clock(), reason, text)

    def check(self) -> Failure | None:
        now = self._clock()
        if self._fatal is not None and now - self._fatal[0] >= self.fatal_grace_s:
            return self.fatal_seen()
        if now - self._last_progress >= self.silence_s:
            return Failure(f"no progress line for {self.silence_s:.0f} s", "", self.cause_lines())
        return None

    def fatal_seen(self) -> Failure | None:
        if self._fatal is None:
            return None
        return Failure(self._fatal[1], self._fatal[2], self.cause_lines())

    def exit_failure(self, code: int) -> Failure:
        """Why a run that ended by itself with a non-zero exit code failed."""
        return self.fatal_seen() or Failure(f"main_ppo exited with code {code}", "", self.cause_lines())

    def cause_lines(self) -> list[str]:
        return list(self._causes)[:MAX_CAUSE_LINES]


def stream(stdout, on_line, watchdog: Watchdog, poll_s: float = 1.0) -> Failure | None:
    """Pass each line of `stdout` (a binary pipe) to `on_line` and the watchdog until the pipe ends
    (None: the run ended by itself) or the watchdog fires (its Failure: the caller ends the run)."""
    lines: queue.Queue = queue.Queue()

    def pump():
        for raw in stdout:
            lines.put(raw.decode("utf-8", "replace"))
        lines.put(None)

    threading.Thread(target=pump, daemon=True, name="demo-output").start()
    while True:
        try:
            line = lines.get(timeout=poll_s)
        except queue.Empty:
            line = ""
        if line is None:  # the run ended by itself
            return None
        if line:
            on_line(line)
            watchdog.see(line)
        failure = watchdog.check()
        if failure is not None:
            return failure
