"""Progress of a long loop: a tqdm bar on a terminal; plain lines every ``every`` seconds when the
output goes to a file or a pipe (a log), where a bar would write one line per update."""
from __future__ import annotations

import sys
import time


def progress(iterable, desc: str, total: int | None = None, initial: int = 0, stream=None,
             every: float = 30.0, clock=time.monotonic, leave: bool = True):
    """``leave=False``: a bar that clears itself when done (an evaluation inside the training bar)."""
    stream = sys.stderr if stream is None else stream
    if getattr(stream, "isatty", lambda: False)():
        from tqdm import tqdm
        return tqdm(iterable, desc=desc, total=total, initial=initial, dynamic_ncols=True, file=stream, leave=leave)
    return LineProgress(iterable, desc, total, initial, stream, every, clock)


def write(message: str) -> None:
    """Print a line without breaking a bar (tqdm.write clears and redraws it)."""
    from tqdm import tqdm
    tqdm.write(message)


def _duration(seconds: float) -> str:
    m, s = divmod(int(round(seconds)), 60)
    return f"{m // 60}h{m % 60:02d}m" if m >= 60 else f"{m}m{s:02d}s"


class LineProgress:
    """``for x in LineProgress(...)``, with tqdm's ``set_postfix`` and ``close``: one line
    ``desc: n/total (p%), elapsed, s/it, eta | key=value ...`` at most every ``every`` seconds,
    and one at the end."""

    def __init__(self, iterable, desc, total, initial, stream, every, clock):
        self.iterable, self.desc, self.stream, self.every, self.clock = iterable, desc, stream, every, clock
        self.total = total if total is not None else (len(iterable) + initial if hasattr(iterable, "__len__") else None)
        self.n = self.start_n = initial
        self.postfix: dict = {}
        self.t0 = self.last = clock()
        self.closed = False

    def set_postfix(self, **kw) -> None:
        self.postfix = {k: v for k, v in kw.items()}

    def line(self) -> str:
        dt = self.clock() - self.t0
        done = self.n - self.start_n
        parts = [f"{self.desc}: {self.n}" + (f"/{self.total} ({100 * self.n / max(self.total, 1):.0f}%)"
                                              if self.total else ""), f"{_duration(dt)} elapsed"]
        if done:
            parts.append(f"{dt / done:.2f} s/it")
            if self.total:
                parts.append(f"eta {_duration(dt / done * (self.total - self.n))}")
        text = ", ".join(parts)
        return text + (" | " + " ".join(f"{k}={v}" for k, v in self.postfix.items()) if self.postfix else "")

    def _emit(self) -> None:
        print(self.line(), file=self.stream, flush=True)
        self.last = self.clock()

    def __iter__(self):
        try:
            for x in self.iterable:
                yield x
                self.n += 1
                if self.clock() - self.last >= self.every:
                    self._emit()
        finally:
            self.close()

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self._emit()
