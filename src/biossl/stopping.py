"""Stopping a training process on SIGINT/SIGTERM without losing what it saved.

The first signal sets a flag the loop checks after each step, and says so at once (a step
can take many seconds). A second one leaves at once (:class:`StopNow`), except while a
checkpoint is being written: that write is finished first. Either way the last complete
checkpoint stays on disk.
"""
from __future__ import annotations

import os
import signal


def say(text: str) -> None:
    """Write to stderr from a signal handler (os.write: print() may be mid-call already)."""
    try:
        os.write(2, text.encode())
    except OSError:
        pass


class StopNow(BaseException):
    """A second signal while a step runs: leave at once (not an Exception: nothing catches it)."""

    def __init__(self, signum: int):
        self.signum = signum


class StopFlag:
    """First SIGINT/SIGTERM: a flag the loop checks after each step (it says so at once).
    A second one: :class:`StopNow` right away, except while a checkpoint is being written,
    which is then finished first (``count`` tells the writer to stop after it), so the saved
    state is never lost."""

    def __init__(self, announce: bool = True) -> None:
        self.announce = announce  # False: another process of the launch says it (rank 0)
        self.signal: int | None = None
        self.count = 0
        self.saving = False
        self._old: dict = {}

    def __enter__(self):
        for s in (signal.SIGINT, signal.SIGTERM):
            try:
                self._old[s] = signal.signal(s, self._handle)
            except ValueError:  # not the main thread: no handlers
                pass
        return self

    def _handle(self, signum, frame) -> None:
        name = signal.Signals(signum).name
        self.count += 1
        if self.signal is None:
            self.signal = signum
            if self.announce:
                say(f"\nbiossl: {name} received: stopping after the current step, then saving a "
                    f"checkpoint (send it again to stop at once; the last checkpoint stays intact)\n")
        elif self.saving:
            say(f"\nbiossl: {name} again: finishing the checkpoint being written, then stopping\n")
        else:
            raise StopNow(signum)

    def __exit__(self, *exc) -> None:
        for s, h in self._old.items():
            signal.signal(s, h)
