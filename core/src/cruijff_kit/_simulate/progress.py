"""Progress of a simulation on stderr: a rich bar on a terminal, plain lines in log files."""

from __future__ import annotations

import sys
import time
from typing import Any


class Progress:
    """Counts finished conversations; ``advance()`` after each, ``close()`` at the end."""

    def __init__(self, total: int, done: int, description: str = "simulate", enabled: bool = True) -> None:
        self.total, self.done, self.failed = total, done, 0
        self.description = description
        self._start = time.monotonic()
        self._bar: Any = None
        self._task: Any = None
        self._last_line = -1
        self.enabled = enabled
        if enabled and sys.stderr.isatty():
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )
            from rich.progress import Progress as RichProgress

            self._bar = RichProgress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                                     TextColumn("{task.fields[failed]} failed"), TimeElapsedColumn(),
                                     TimeRemainingColumn(), console=Console(stderr=True))
            self._bar.start()
            self._task = self._bar.add_task(description, total=total, completed=done, failed=0)
        else:
            self._line()

    def advance(self, failed: bool = False) -> None:
        """One more conversation finished (or failed)."""
        if failed:
            self.failed += 1
        else:
            self.done += 1
        if self._bar is not None:
            self._bar.update(self._task, completed=self.done, failed=self.failed)
        else:
            self._line()

    def _line(self) -> None:
        if not self.enabled:
            return
        seen = self.done + self.failed
        pct = int(100 * seen / self.total) if self.total else 100
        if pct // 10 != self._last_line // 10 or seen == self.total:
            self._last_line = pct
            elapsed = time.monotonic() - self._start
            print(f"[{self.description}] {self.done}/{self.total} done, {self.failed} failed "
                  f"({pct}%, {elapsed:.0f}s)", file=sys.stderr, flush=True)

    def close(self) -> None:
        """Stop the bar."""
        if self._bar is not None:
            self._bar.stop()
