"""Stop meta-training cleanly on Ctrl-C or a scheduler's SIGTERM.

A signal that lands in the middle of a meta-step finds the trainer half-way: its generators
have drawn for a step whose counter has not advanced, the optimiser may have stepped, the pools
may hold part of the new states. A checkpoint taken there does not resume to the run that was
interrupted. :class:`StopOnSignal` therefore turns SIGINT and SIGTERM into a *request*: the
handler only records the signal, and :meth:`gnca.trainer.MetaTrainer.train` finishes the
meta-step it is in, writes ``last.pt`` and returns. A checkpoint taken at a meta-step boundary
resumes bit for bit (on the CPU), wherever the signal landed.

A second Ctrl-C stops at once without saving (the last checkpoint on disk stays intact: every
write is atomic), unless ``repeat_forces=False`` (the ranks of a distributed run, which torchrun
sends the signal a second time on purpose).

Example::

    with StopOnSignal() as stop:
        trainer.train("runs/x", stop=stop)
    if stop.received is not None:
        ...  # stopped early; last.pt holds the last complete meta-step
"""

from __future__ import annotations

import signal
import sys
import threading
from types import FrameType, TracebackType

__all__ = ["StopOnSignal", "exit_status"]

#: The signals that request a stop: Ctrl-C, and what schedulers (SLURM, Kubernetes) send.
SIGNALS = (signal.SIGINT, signal.SIGTERM)


def exit_status(signum: int) -> int:
    """The shell's exit status of a command stopped by ``signum`` (130 for SIGINT, 143 for
    SIGTERM)."""
    return 128 + int(signum)


class StopOnSignal:
    """A context manager whose handlers turn SIGINT and SIGTERM into a stop request.

    Call the object (``stop()``) to ask whether a stop was requested; :attr:`received` is the
    first signal's number (``None`` until one arrives). Outside the main thread, where Python
    cannot install handlers, it installs none and never requests a stop. A signal this process
    ignores when the context is entered (``SIG_IGN``: SIGINT in a job a non-interactive shell
    started in the background, or under ``nohup``) stays ignored, so that the whole run, the
    final evaluation included, answers it the same way.

    Args:
        repeat_forces: a second SIGINT raises :class:`KeyboardInterrupt` at once.
        notice: print one line to stderr when the first signal arrives.
    """

    def __init__(self, *, repeat_forces: bool = True, notice: bool = True) -> None:
        self.repeat_forces = repeat_forces
        self.notice = notice
        self.received: int | None = None
        self._previous: dict[int, object] = {}

    def __call__(self) -> bool:
        return self.received is not None

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.received is not None:
            if self.repeat_forces and signum == signal.SIGINT:
                raise KeyboardInterrupt
            return
        self.received = signum
        if self.notice:
            more = " (Ctrl-C again to stop at once, without saving)" if self.repeat_forces else ""
            print(
                f"\n{signal.Signals(signum).name}: stopping after this meta-step{more}",
                file=sys.stderr,
                flush=True,
            )

    def __enter__(self) -> StopOnSignal:
        if threading.current_thread() is threading.main_thread():
            for s in SIGNALS:
                if signal.getsignal(s) is signal.SIG_IGN:
                    continue  # ignored when we started (nohup, a shell's background job): stays so
                self._previous[s] = signal.signal(s, self._handle)
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        err: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)  # type: ignore[arg-type]
        self._previous = {}
