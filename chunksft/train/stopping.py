"""Graceful stop on SIGTERM / SIGINT (preemption, Ctrl-C): finish the step, save, exit with one line.

A signal only records itself (`StopSignals.received`); the training loop asks every rank at the end
of each optimizer step (one all-reduce, shared with the time-based save) whether any rank was
signalled, so all ranks save the same step together and leave. The same signal a second time means
"now": the default behaviour comes back (the process ends at once, without saving). A *different*
second signal is ignored: after Ctrl-C the DeepSpeed launcher and torchrun also send SIGTERM to
every rank, which must not cut the save short.

The DeepSpeed launcher and torchrun forward SIGTERM to the ranks and wait 30 s before SIGKILL, and
Ctrl-C reaches every process of the terminal's process group: enough for a step and a save of a
model that fits the machine; a longer save is cut by the launcher and resume falls back to the
previous complete checkpoint (the save protocol never leaves a half-written tag that counts).
"""
from __future__ import annotations

import signal
from typing import Optional

HANDLED = (signal.SIGTERM, signal.SIGINT)


class TrainingStopped(RuntimeError):
    """Raised on every rank after the checkpoint of a signalled stop is saved; exit with `exit_code`."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.exit_code = 128 + signum  # the shell's convention for "ended by signal N"


class StopSignals:
    """Context manager: while active, SIGTERM / SIGINT set `received` instead of ending the process.

    announce: print one line when the first signal arrives (rank 0), so the user knows it was heard.
    """

    def __init__(self, announce: bool = False):
        self.received: Optional[int] = None
        self.announce = announce
        self._previous: dict[int, object] = {}

    def _handle(self, signum: int, frame) -> None:
        if self.received is None:
            self.received = signum
            if self.announce:
                print(f"{signal_name(signum)} received: finishing the current step and saving a checkpoint "
                      f"(send {signal_name(signum)} again to stop at once without saving)", flush=True)
        elif signum == self.received:  # the same signal again: stop now, the old way
            previous = self._previous.get(signum)
            self.__exit__()
            if previous in (signal.SIG_IGN, None):  # an ignored signal must still stop the process now
                signal.signal(signum, signal.SIG_DFL)
            signal.raise_signal(signum)

    def __enter__(self) -> "StopSignals":
        for signum in HANDLED:
            self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()


def signal_name(signum: int) -> str:
    return signal.Signals(signum).name
