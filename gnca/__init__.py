"""gnca: Meta-Neural Cellular Automata on the weight graph of any feedforward DAG.

Every weight of a task network is a cell with a hidden state; one shared :class:`LocalRule`
updates all of them from their neighbourhoods until the task network solves its task.
"""

from gnca.architecture import Architecture
from gnca.damage import zero_out
from gnca.forward import task_forward
from gnca.graph import WeightGraph, line_graph_edge_index
from gnca.layer_senses import layer_senses  # also lets SenseReader read layer nets
from gnca.layers import LayerNet
from gnca.perception import perceive
from gnca.rule import LocalRule
from gnca.state import identity_codes, initial_state

__version__ = "0.1.0"

__all__ = [
    "Architecture",
    "LayerNet",
    "LocalRule",
    "WeightGraph",
    "identity_codes",
    "initial_state",
    "layer_senses",
    "line_graph_edge_index",
    "perceive",
    "task_forward",
    "zero_out",
]
