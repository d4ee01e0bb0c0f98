"""How much accuracy can first-layer filters that are smooth functions of the codes reach at all?

A grown one-hidden-layer MLP ``P-H-C`` gets every first-layer weight from the rule looking at
identity codes: the input pixel's position and the hidden neuron's position, each as sines and
cosines up to ``task.code_freqs``. Two Adam-trained proxies bound what such filters can express
(no rule involved; 784-32-10 tanh nets on the task's own split, Adam, batches of 256):

- ``--pixels f``: every hidden neuron's filter lies in the span of the 2-D Fourier products of
  frequency at most ``f`` over the image (``(2f + 1)^2`` basis images; ``0``: unrestricted);
- ``--neurons f``: the filters are a smooth function of the hidden neuron's position ``p``:
  ``W1[j] = sum_k phi_k(p_j) M_k`` with ``phi`` = 1 and sin/cos(2 pi k p), ``k <= f``, so W1 has
  rank at most ``2f + 1`` (the rank a rule reading ``f`` frequencies of hidden codes can reach
  when it acts linearly on them).

    GNCA_DATA=../shared/data/mnist python examples/code_bounds.py --pixels 3 6 0 --neurons 1 3 6 16
"""

from __future__ import annotations

import argparse
import math

import torch
import torch.nn.functional as F

from gnca.data import load_dataset


def fourier_1d(f: int, n: int) -> torch.Tensor:
    """``(2f + 1, n)``: 1 and sin/cos(2 pi k r), ``k = 1..f``, at the cell centres ``r`` of n."""
    r = (torch.arange(n) + 0.5) / n
    rows = [torch.ones(n)]
    for k in range(1, f + 1):
        rows += [torch.sin(2 * math.pi * k * r), torch.cos(2 * math.pi * k * r)]
    return torch.stack(rows)


def pixel_basis(f: int, height: int, width: int) -> torch.Tensor:
    """``((2f + 1)^2, height * width)`` unit-norm 2-D Fourier products of frequency <= f."""
    rows, cols = fourier_1d(f, height), fourier_1d(f, width)
    basis = torch.einsum("ar,bc->abrc", rows, cols).reshape(-1, height * width)
    return basis / basis.norm(dim=1, keepdim=True)


def train_proxy(
    data, filters: torch.Tensor | None, hidden: int, steps: int, lr: float, seed: int, mode: str
) -> float:
    """Test accuracy of an Adam-trained ``P-hidden-C`` tanh MLP whose first layer is
    ``A @ filters`` (``mode="pixels"``: ``A (hidden, n)``, ``filters (n, P)``) or
    ``filters @ M`` (``mode="neurons"``: ``filters (hidden, n)``, ``M (n, P)``); ``None``: free."""
    gen = torch.Generator().manual_seed(seed)
    n_in, n_out = data.n_features, data.n_classes
    if filters is None:
        factor = torch.randn(hidden, n_in, generator=gen) / math.sqrt(n_in)
    elif mode == "pixels":
        factor = torch.randn(hidden, filters.shape[0], generator=gen) / math.sqrt(filters.shape[0])
    else:
        factor = torch.randn(filters.shape[1], n_in, generator=gen) / math.sqrt(n_in)
    factor.requires_grad_(True)
    b1 = torch.zeros(hidden, requires_grad=True)
    w2 = (torch.randn(n_out, hidden, generator=gen) / math.sqrt(hidden)).requires_grad_(True)
    b2 = torch.zeros(n_out, requires_grad=True)
    opt = torch.optim.Adam([factor, b1, w2, b2], lr)

    def first_layer() -> torch.Tensor:
        if filters is None:
            return factor
        return factor @ filters if mode == "pixels" else filters @ factor

    def forward(x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(x @ first_layer().T + b1) @ w2.T + b2

    X, y = data.X_train, data.y_train
    for _ in range(steps):
        idx = torch.randint(0, X.shape[0], (256,), generator=gen)
        loss = F.cross_entropy(forward(X[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        return (forward(data.X_test).argmax(1) == data.y_test).float().mean().item()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--pixels", type=int, nargs="*", default=[], help="pixel frequencies (0: free)")
    p.add_argument("--neurons", type=int, nargs="*", default=[], help="hidden-neuron frequencies")
    p.add_argument("--hidden", type=int, default=32)
    p.add_argument("--steps", type=int, default=3000, help="Adam steps of 256 examples")
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--downsample", type=int, default=1, help="k x k pooling of the images")
    args = p.parse_args()
    torch.set_num_threads(1)
    data = load_dataset("mnist", downsample=args.downsample)
    height, width = data.image_shape
    run = (args.steps, args.lr, args.seed)
    for f in args.pixels:
        basis = pixel_basis(f, height, width) if f > 0 else None
        acc = train_proxy(data, basis, args.hidden, *run, "pixels")
        size = basis.shape[0] if basis is not None else height * width
        print(f"pixels f={f}: {size} basis images, test accuracy {acc:.4f}")
    for f in args.neurons:
        phi = fourier_1d(f, args.hidden).T  # (hidden, 2f + 1)
        acc = train_proxy(data, phi, args.hidden, *run, "neurons")
        print(f"neurons f={f}: W1 rank <= {phi.shape[1]}, test accuracy {acc:.4f}")


if __name__ == "__main__":
    try:
        main()
    except ValueError as err:  # a missing checkpoint or data folder, a bad file: one line
        raise SystemExit(f"error: {err}") from None
