"""Progress of a long pass over documents: a tqdm bar on a terminal, plain lines otherwise."""

from __future__ import annotations

import sys
import time
from typing import TextIO


class Progress:
    """Counts documents and input bytes; shows docs/s and MB/s.

    On a terminal a tqdm bar is drawn; elsewhere (logs, CI) one line is printed every
    ``log_interval`` documents.
    """

    def __init__(self, description: str, log_interval: int = 100_000, stream: TextIO | None = None):
        self.stream = stream or sys.stderr
        self.description = description
        self.log_interval = log_interval
        self.docs = 0
        self.bytes = 0
        self.start = time.perf_counter()
        self._next_log = log_interval
        self._bar = None
        if self.stream.isatty():
            from tqdm import tqdm

            self._bar = tqdm(desc=description, unit=" docs", file=self.stream, dynamic_ncols=True)

    def update(self, docs: int, nbytes: int) -> None:
        self.docs += docs
        self.bytes += nbytes
        if self._bar is not None:
            self._bar.update(docs)
            self._bar.set_postfix_str(f"{self.mb_per_s:.1f} MB/s", refresh=False)
        elif self.docs >= self._next_log:
            self._next_log = self.docs + self.log_interval
            print(self.line(), file=self.stream, flush=True)

    @property
    def elapsed(self) -> float:
        return max(time.perf_counter() - self.start, 1e-9)

    @property
    def mb_per_s(self) -> float:
        return self.bytes / 1e6 / self.elapsed

    def line(self) -> str:
        return (
            f"{self.description}: {self.docs} docs, {self.bytes / 1e6:.1f} MB in {self.elapsed:.1f} s "
            f"({self.docs / self.elapsed:.0f} docs/s, {self.mb_per_s:.2f} MB/s)"
        )

    def write(self, message: str) -> None:
        """Print a message without breaking the bar."""
        if self._bar is not None:
            self._bar.write(message, file=self.stream)
        else:
            print(message, file=self.stream, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
