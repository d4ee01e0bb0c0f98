"""Run ``gnca train`` in this process and send it a real signal at a chosen point.

Used by ``tests/test_interrupt.py`` as ``python tests/interrupt_driver.py POINT STEP SIGNAL --
ARGS...`` where ``ARGS`` are the arguments of ``gnca``. The library is not changed: the driver
wraps one function so that, when meta-step ``STEP`` (counted from 1) reaches ``POINT``, the
process signals itself with ``os.kill``; the signal is then delivered exactly as a Ctrl-C
(``INT``), a scheduler's ``TERM`` or a ``kill -9`` (``KILL``) from outside would be. Points:

- ``draw``: the meta-step has drawn its rollout length and data batch, nothing else;
- ``unroll``: inside the unrolled growth, before its first rule step;
- ``commit``: the optimiser has stepped, the pools have not yet taken the grown states;
- ``checkpoint``: inside the checkpoint write after meta-step ``STEP`` (serialised, not yet on
  disk);
- ``evaluate``: the end-of-training evaluation has started (``STEP`` is ignored);
- ``none``: no signal.
"""

from __future__ import annotations

import os
import signal
import sys


def _arm(point: str, step: int, sigs: list[signal.Signals]) -> None:
    import gnca.checkpoint as checkpoint_mod
    from gnca.objective import MetaObjective
    from gnca.pool import SamplePool
    from gnca.trainer import MetaTrainer

    now = {"step": 0}  # meta-steps completed when the current one started
    fired = {"done": False}

    def fire() -> None:
        if not fired["done"]:
            fired["done"] = True
            for sig in sigs:
                os.kill(os.getpid(), sig)

    def wrap(owner: object, name: str, when) -> None:
        original = getattr(owner, name)

        def wrapped(*args, **kwargs):
            if when(*args, **kwargs):
                fire()
            return original(*args, **kwargs)

        setattr(owner, name, wrapped)

    wrap(MetaTrainer, "meta_step", lambda self: now.update(step=self.step) and False)
    in_step = lambda *a, **k: now["step"] == step - 1  # noqa: E731
    if point == "draw":
        wrap(MetaObjective, "batch", in_step)
    elif point == "unroll":
        wrap(MetaObjective, "unroll", in_step)
    elif point == "commit":
        wrap(SamplePool, "commit", in_step)
    elif point == "checkpoint":
        # after serialisation, before the bytes reach the file
        wrap(checkpoint_mod, "atomic_write", lambda *a, **k: now["step"] == step - 1)
    elif point == "evaluate":
        wrap(MetaTrainer, "evaluate", lambda *a, **k: True)
    elif point != "none":
        raise SystemExit(f"unknown point {point}")


def main() -> int:
    point, step, name = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    if sys.argv[4] != "--":
        raise SystemExit("usage: interrupt_driver.py POINT STEP SIGNAL -- ARGS...")
    base, _, times = name.partition("x")
    # a Ctrl-C from a terminal: Python's own SIGINT handler, even when this process was started
    # with SIGINT ignored (a background job of a non-interactive shell, where gnca leaves it so)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    _arm(point, step, [getattr(signal, f"SIG{base}")] * int(times or 1))
    from gnca.cli import main as gnca_main

    return gnca_main(sys.argv[5:])


if __name__ == "__main__":
    sys.exit(main())
