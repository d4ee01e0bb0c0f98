"""The paper's three experiments, reproducible with one command each.

* :mod:`gnca.experiments.stability`: loss far past the training horizon, pooled vs unpooled rule.
* :mod:`gnca.experiments.robustness`: 20 zero-outs over 100 rule steps, with and without
  damage in meta-training.
* :mod:`gnca.experiments.generalization`: a heatmap of grown-net accuracy over a grid of MLP
  depths and widths, the training architectures outlined.

Each ``run_*`` function is a protocol (what it grows, measures and tabulates) on top of
:class:`~gnca.experiments.runner.ExperimentRun`, which does what they share (option checks, the
output folder, obtaining the rules, seeded growth, clocks, ``summary.json``). Each writes a
Markdown table, CSV files, a PNG and ``summary.json`` into an output folder and returns the
summary. An experiment is one module: its protocol, its flags and command (``add_arguments``,
``main``), its headline metrics over seeds (``headline``) and its figure (``plot``);
:mod:`gnca.experiments.cli` registers them as ``gnca experiment NAME``, and
:mod:`gnca.experiments.seeds` summarises one experiment over several meta-training seeds
(``--seeds``).
"""

from gnca.experiments.common import ExperimentError, RuleSource
from gnca.experiments.generalization import run_generalization
from gnca.experiments.robustness import run_robustness
from gnca.experiments.runner import ExperimentRun
from gnca.experiments.stability import run_stability

__all__ = [
    "ExperimentError",
    "ExperimentRun",
    "RuleSource",
    "run_generalization",
    "run_robustness",
    "run_stability",
]
