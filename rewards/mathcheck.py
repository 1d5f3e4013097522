"""Symbolic math answers through the ``math-verify`` library, with a hard time limit per answer.

``math-verify`` (what VLM-R1's default accuracy tries first) parses LaTeX into sympy and compares
the expressions, so ``$2\\sqrt{2}$`` equals ``$\\sqrt{8}$``. Sympy can run for ever on a hostile
answer (``2^{2^{2^{99}}}``), and the library's own time limit uses ``signal.alarm``, which works only
in a process's main thread (a Ray actor's calls are not). So every comparison runs in a child
process (``rewards/_mathcheck_child.py``, one per reward worker, started on first use) and an answer
that takes longer than ``timeout_s`` gets the child killed and scores 0 with the failure
``timeout``; the next answer starts a fresh child. Nothing of the model's text is evaluated as code.
"""
from __future__ import annotations

import atexit
import contextlib
import json
import os
import select
import subprocess
import sys
import threading
import time

CHILD = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_mathcheck_child.py")
START_TIMEOUT_S = 120.0  # importing sympy on a busy machine; not charged to any answer


class MathChecker:
    """One child process answering ``equal(answer, truth)`` questions; thread-safe."""

    def __init__(self):
        self._lock = threading.Lock()
        self._proc: subprocess.Popen | None = None
        self.timeouts = 0  # answers that ran out of time (each killed a child)
        self.starts = 0
        self._deadline: float | None = None  # the end of the current chunk's budget (``budget``)

    @contextlib.contextmanager
    def budget(self, seconds: float | None):
        """Within the block, all answers together get at most ``seconds``: each one's limit is cut to
        what is left, and once it is spent the rest score 0 (``timeout``) without running. A reward
        worker scores a chunk inside one, so a chunk of hostile answers ends well before the pool's
        ``reward.timeout_s`` would take the worker for hung."""
        self._deadline = None if seconds is None else time.monotonic() + seconds
        try:
            yield
        finally:
            self._deadline = None

    def _start(self) -> subprocess.Popen:
        proc = subprocess.Popen([sys.executable, "-u", CHILD, str(os.getpid())], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, bufsize=1)
        self.starts += 1
        reply = self._read(proc, START_TIMEOUT_S)
        if reply is None or not reply.get("ready"):
            self._kill(proc)
            raise RuntimeError(f"the math-verify child did not start: {reply and reply.get('error')}")
        return proc

    @staticmethod
    def _read(proc: subprocess.Popen, timeout_s: float) -> dict | None:
        ready, _, _ = select.select([proc.stdout], [], [], max(timeout_s, 0.0))
        if not ready:
            return None
        line = proc.stdout.readline()
        return json.loads(line) if line else None

    @staticmethod
    def _kill(proc: subprocess.Popen) -> None:
        proc.kill()
        proc.wait()
        for f in (proc.stdin, proc.stdout):
            try:
                f.close()
            except OSError:
                pass

    def equal(self, answer: str, truth: str, timeout_s: float) -> tuple[bool, str | None]:
        """``(equal, failure)``: failure is ``timeout``, ``unparsable_solution``, ``unparsable``,
        ``unavailable`` (child could not start) or None."""
        with self._lock:
            if self._deadline is not None:
                left = self._deadline - time.monotonic()
                if left <= 0:
                    self.timeouts += 1
                    return False, "timeout"
                timeout_s = min(timeout_s, left)
            try:
                if self._proc is None or self._proc.poll() is not None:
                    self._proc = self._start()
            except (OSError, RuntimeError):
                self._proc = None
                return False, "unavailable"
            proc = self._proc
            try:
                proc.stdin.write(json.dumps({"answer": answer, "truth": truth}) + "\n")
                proc.stdin.flush()
                reply = self._read(proc, timeout_s)
            except (OSError, ValueError):
                reply = None
            if reply is None:  # out of time, or the child died on this answer
                self.timeouts += 1
                self._kill(proc)
                self._proc = None
                return False, "timeout"
            return bool(reply["equal"]), reply.get("failure")

    def __reduce__(self):  # the process's one checker (its lock and child stay here)
        return (_checker, ())

    def close(self) -> None:
        with self._lock:
            if self._proc is not None:
                self._kill(self._proc)
                self._proc = None


def _checker() -> MathChecker:
    return CHECKER


CHECKER = MathChecker()
atexit.register(CHECKER.close)
