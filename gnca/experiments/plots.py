"""What the experiments' figures share: matplotlib on the Agg backend (no display needed),
imported only when a figure is drawn, and the colours of the rules. Each experiment module draws
its own figure (its ``plot``)."""

from __future__ import annotations

from typing import Any

COLORS = ("tab:blue", "tab:orange", "tab:green", "tab:red")
LOSS_CLIP = 1e3  # loss axes stop here (exploding nets go beyond)


def pyplot() -> Any:
    """``matplotlib.pyplot`` on the Agg backend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt
