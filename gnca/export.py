"""Grown task nets as plain PyTorch modules.

This file imports nothing from gnca on purpose: ``gnca export`` copies it next to the exported
weights, so users can load grown nets with torch alone::

    from grown_net import GrownNets
    nets = GrownNets.load("nets.pt")
    logits = nets(X)          # (G, B, n_out)
    one = nets.to_sequential(0)  # nn.Sequential of nn.Linear/activation for an MLP
"""

from __future__ import annotations

import torch
from torch import nn

_ACTS = {
    "tanh": nn.Tanh,
    "relu": nn.ReLU,
    "gelu": nn.GELU,
    "sigmoid": nn.Sigmoid,
    "identity": nn.Identity,
}


class GrownNets(nn.Module):
    """``G`` feedforward nets sharing one DAG architecture, each with its own weights.

    Neurons are evaluated level by level; hidden neurons apply ``activation``, outputs are
    logits, bias neurons hold 1.

    Buffers:
        weights: ``(G, E)`` the nets' weights; src, dst: ``(E,)`` neuron ids of each weight;
        levels: ``(N,)`` neuron levels; kinds: ``(N,)`` 0 input, 1 hidden, 2 output, 3 bias;
        inputs: ``(n_in,)``; outputs: ``(n_out,)`` neuron ids.
    """

    def __init__(
        self,
        weights: torch.Tensor,
        src: torch.Tensor,
        dst: torch.Tensor,
        levels: torch.Tensor,
        kinds: torch.Tensor,
        inputs: torch.Tensor,
        outputs: torch.Tensor,
        activation: str = "tanh",
        mlp_sizes: list[int] | None = None,
    ) -> None:
        super().__init__()
        if activation not in _ACTS:
            raise ValueError(f"unknown activation {activation!r}")
        self.activation = activation
        self.mlp_sizes = list(mlp_sizes) if mlp_sizes else None
        self.act = _ACTS[activation]()
        self.register_buffer("weights", weights.detach().clone())
        for name, t in (
            ("src", src),
            ("dst", dst),
            ("levels", levels),
            ("kinds", kinds),
            ("inputs", inputs),
            ("outputs", outputs),
        ):
            self.register_buffer(name, t.detach().clone().long())

    @property
    def num_nets(self) -> int:
        return int(self.weights.shape[0])

    def forward(self, X: torch.Tensor) -> torch.Tensor:
        """Logits ``(G, B, n_out)`` of every net on ``X (B, n_in)``."""
        g, b = self.weights.shape[0], X.shape[0]
        n = self.levels.numel()
        A = torch.zeros(g, n, b, dtype=self.weights.dtype, device=X.device)
        A[:, self.inputs] = X.to(A.dtype).T.unsqueeze(0)
        A[:, self.kinds == 3] = 1.0
        computed = (self.kinds == 1) | (self.kinds == 2)
        dst_level = self.levels[self.dst]
        for level in torch.unique(self.levels[computed]).tolist():
            e = torch.nonzero(dst_level == level).flatten()
            contrib = self.weights[:, e].unsqueeze(2) * A[:, self.src[e]]  # (G, E_l, B)
            z = torch.zeros_like(A).index_add(1, self.dst[e], contrib)
            neurons = torch.nonzero(computed & (self.levels == level)).flatten()
            zn = z[:, neurons]
            is_out = (self.kinds[neurons] == 2).view(1, -1, 1)
            A[:, neurons] = torch.where(is_out, zn, self.act(zn))
        return A[:, self.outputs].transpose(1, 2)

    def to_sequential(self, i: int) -> nn.Sequential:
        """Net ``i`` as an ``nn.Sequential`` (MLPs exported from ``Architecture.mlp`` only)."""
        if self.mlp_sizes is None:
            raise ValueError("to_sequential needs an MLP; this net is a general DAG")
        w = self.weights[i]
        sizes = self.mlp_sizes
        n_plain = sum(a * b for a, b in zip(sizes[:-1], sizes[1:], strict=False))
        has_bias = w.numel() != n_plain
        layers: list[nn.Module] = []
        off = 0
        for k, (a, b) in enumerate(zip(sizes[:-1], sizes[1:], strict=False)):
            lin = nn.Linear(a, b, bias=has_bias)
            with torch.no_grad():
                lin.weight.copy_(w[off : off + a * b].view(a, b).T)
                off += a * b
                if has_bias:
                    lin.bias.copy_(w[off : off + b])
                    off += b
            layers.append(lin)
            if k < len(sizes) - 2:
                layers.append(_ACTS[self.activation]())
        return nn.Sequential(*layers)

    def save(self, path: str) -> None:
        """Save buffers and metadata (loadable with ``torch.load(weights_only=True)``)."""
        torch.save(
            {
                "format": "gnca-grown-nets",
                "activation": self.activation,
                "mlp_sizes": self.mlp_sizes,
                "buffers": {k: v.cpu() for k, v in self.state_dict().items()},
            },
            path,
        )

    @classmethod
    def load(cls, path: str) -> GrownNets:
        d = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(d, dict) or d.get("format") != "gnca-grown-nets":
            raise ValueError(f"{path} is not a file written by GrownNets.save")
        b = d["buffers"]
        return cls(
            b["weights"],
            b["src"],
            b["dst"],
            b["levels"],
            b["kinds"],
            b["inputs"],
            b["outputs"],
            d["activation"],
            d["mlp_sizes"],
        )
