"""Progress bars that stay readable in a log file.

On a terminal this is tqdm. When the output is not a terminal (a log file, a
pipe, CI), tqdm's carriage-return frames would pile up by the thousand, so the
bar prints one plain line per `every` steps (and at the end) instead.
"""
import sys
import time
from typing import Dict, Optional

from tqdm.auto import tqdm

LINES_PER_RUN = 20  # a non-terminal bar prints about this many lines over its total


def is_terminal(stream=None) -> bool:
    stream = stream or sys.stderr
    return bool(getattr(stream, "isatty", lambda: False)())


class LineProgress:
    """tqdm's update / set_postfix / close, as a line every `every` steps."""

    def __init__(self, total: int, desc: str, initial: int = 0, every: Optional[int] = None, stream=None):
        self.total, self.desc, self.n = total, desc, initial
        self.every = every or max(1, total // LINES_PER_RUN)
        self.stream = stream or sys.stderr
        self.postfix: Dict[str, str] = {}
        self.start, self.start_n = time.perf_counter(), initial
        self._last_printed = initial

    def set_postfix(self, postfix: Optional[Dict[str, str]] = None, refresh: bool = False, **values) -> None:
        self.postfix = {**(postfix or {}), **values}

    def update(self, n: int = 1) -> None:
        before, self.n = self.n, self.n + n
        if self.n // self.every > before // self.every or self.n >= self.total:
            self._print()

    def _print(self) -> None:
        if self.n == self._last_printed:
            return
        self._last_printed = self.n
        elapsed = time.perf_counter() - self.start
        rate = (self.n - self.start_n) / elapsed if elapsed > 0 else 0.0
        extra = "".join(f", {k}={v}" for k, v in self.postfix.items())
        print(f"{self.desc}: {self.n}/{self.total} ({rate:.1f} it/s{extra})", file=self.stream, flush=True)

    def close(self) -> None:
        if self.n != self._last_printed and self.n > self.start_n:
            self._print()


class _Silent:
    def update(self, n: int = 1) -> None:
        pass

    def set_postfix(self, postfix=None, refresh: bool = False, **values) -> None:
        pass

    def close(self) -> None:
        pass


def progress(total: int, desc: str, initial: int = 0, enabled: bool = True, leave: bool = True):
    """A progress bar for `total` steps: tqdm on a terminal, plain lines elsewhere, nothing when
    disabled. Transient bars (`leave=False`, e.g. evaluation inside training) print no lines."""
    if not enabled:
        return _Silent()
    if is_terminal():
        return tqdm(total=total, initial=initial, desc=desc, leave=leave, dynamic_ncols=True)
    return LineProgress(total, desc, initial) if leave else _Silent()
