"""Meta-training of a local rule by backpropagation through unrolled growth.

One meta-step, for every training architecture:

1. take a batch of task-net states from the architecture's :class:`~gnca.pool.SamplePool` (the
   worst ``pool.fresh`` replaced by fresh seeds, the best ``pool.damage`` zeroed-out), or fresh
   seeds when the pool is disabled;
2. apply the rule ``K`` times (``K`` uniform in ``[train.k_min, train.k_max]``), optionally
   checkpointing each step's activations;
3. take the cross-entropy of the grown nets on a batch of training data.

The loss averaged over nets and architectures is backpropagated into the rule's parameters only;
each parameter's gradient is normalised (or clipped), Adam steps, and the final states go back
to the pools. A meta-step whose loss is NaN or more than ``train.rollback_factor`` times the
running mean is rolled back (no update, no write-back).
"""

from __future__ import annotations

import csv
import math
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.checkpoint import checkpoint as activation_checkpoint

from gnca.architecture import Architecture
from gnca.checkpoint import load_checkpoint, save_checkpoint
from gnca.config import Config, config_from_dict, config_to_dict
from gnca.damage import zero_out
from gnca.data import Dataset, load_dataset
from gnca.forward import task_forward
from gnca.graph import WeightGraph
from gnca.grow import InitSpec, accuracy, grow, logits_accuracy, logits_cross_entropy
from gnca.pool import SamplePool
from gnca.rule import LocalRule


def resolve_device(name: str) -> torch.device:
    """``auto`` -> CUDA when available, else CPU; otherwise the named device (checked)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"train.device is {name!r} but CUDA is not available on this machine")
    return dev


def build_rule(cfg: Config) -> LocalRule:
    """The local rule described by ``cfg.rule``."""
    r = cfg.rule
    return LocalRule(
        r.hidden_channels,
        r.widths,
        r.activation,
        r.neighbourhood,
        include_self=r.include_self,
        reduce=r.reduce,
        fire_rate=r.fire_rate,
        bound=r.bound,
    )


def init_spec(cfg: Config, training: bool = False) -> InitSpec:
    """How task nets start; ``task.code_jitter`` applies only to meta-training seeds."""
    t = cfg.task
    return InitSpec(
        t.init,
        t.init_scale,
        t.init_seed,
        t.init_noise,
        t.code_freqs,
        t.depth_code,
        code_jitter=t.code_jitter if training else 0.0,
    )


def build_architectures(cfg: Config, dataset: Dataset) -> list[Architecture]:
    """The training MLPs, checked against the dataset's feature and class counts."""
    archs = []
    for i, sizes in enumerate(cfg.task.architectures):
        if sizes[0] != dataset.n_features or sizes[-1] != dataset.n_classes:
            raise ValueError(
                f"task.architectures[{i}] = {sizes} does not fit {dataset.name}: it needs "
                f"{dataset.n_features} inputs and {dataset.n_classes} outputs"
            )
        archs.append(Architecture.mlp(sizes, bias=cfg.task.bias, input_shape=dataset.image_shape))
    return archs


def load_config_dataset(cfg: Config) -> Dataset:
    d = cfg.data
    return load_dataset(
        d.name,
        data_dir=d.data_dir,
        csv_path=d.csv_path,
        test_fraction=d.test_fraction,
        split=d.split,
        seed=d.seed,
        downsample=d.downsample,
        max_train=d.max_train,
    )


@dataclass
class StepStats:
    """What one meta-step did."""

    step: int
    loss: float
    accuracy: float
    k: int
    lr: float
    skipped: bool


class MetaTrainer:
    """Meta-trains a :class:`~gnca.LocalRule` as configured by a :class:`~gnca.config.Config`.

    Args:
        cfg: the resolved configuration.
        dataset: the data (loaded from ``cfg.data`` when ``None``).
        device: overrides ``cfg.train.device``.
        archs: custom training architectures (any DAGs) instead of the MLPs of
            ``cfg.task.architectures``; they are not stored in the config, so pass them again
            when resuming.
    """

    is_main: bool = True  # False on the non-zero ranks of a distributed run: no logs, no files

    def __init__(
        self,
        cfg: Config,
        dataset: Dataset | None = None,
        device: torch.device | None = None,
        archs: Sequence[Architecture] | None = None,
    ) -> None:
        self.cfg = cfg
        self.device = device or resolve_device(cfg.train.device)
        self.data = dataset if dataset is not None else load_config_dataset(cfg)
        if cfg.task.init == "codes":
            from gnca.state import code_channels

            need = code_channels(cfg.task.code_freqs)
            if cfg.rule.hidden_channels < need:
                raise ValueError(
                    f"rule.hidden_channels = {cfg.rule.hidden_channels} is too small for "
                    f"task.init = codes with task.code_freqs = {cfg.task.code_freqs} "
                    f"(needs >= {need})"
                )
        if archs is not None:
            for a in archs:
                if a.num_inputs != self.data.n_features or a.num_outputs != self.data.n_classes:
                    raise ValueError(
                        f"architecture {a.describe()} has {a.num_inputs} inputs and "
                        f"{a.num_outputs} outputs; {self.data.name} needs "
                        f"{self.data.n_features} and {self.data.n_classes}"
                    )
            self.archs = list(archs)
        else:
            self.archs = build_architectures(cfg, self.data)
        torch.manual_seed(cfg.train.seed)
        self.rule = build_rule(cfg).to(self.device)
        self.init = init_spec(cfg)  # growing and evaluation: exact codes
        self.seed_init = init_spec(cfg, training=True)  # meta-training seeds
        t = cfg.train
        if cfg.pool.size and cfg.pool.size < t.batch_size:
            raise ValueError(
                f"pool.size = {cfg.pool.size} is smaller than train.batch_size = {t.batch_size}"
            )
        if cfg.pool.size and cfg.pool.fresh + cfg.pool.damage > t.batch_size:
            raise ValueError(
                f"pool.fresh + pool.damage = {cfg.pool.fresh + cfg.pool.damage} exceeds "
                f"train.batch_size = {t.batch_size}"
            )
        if cfg.pool.fresh > t.batch_size:
            raise ValueError(
                f"pool.fresh = {cfg.pool.fresh} exceeds train.batch_size = {t.batch_size}"
            )
        self.optimizer = torch.optim.Adam(self.rule.parameters(), lr=t.lr)
        self.gen = torch.Generator().manual_seed(t.seed)  # K, pool indices, data batches
        self.dev_gen = torch.Generator(device=self.device).manual_seed(t.seed + 1)  # masks, seeds
        self.graphs = [
            WeightGraph.replicate(a, t.batch_size, device=self.device) for a in self.archs
        ]
        self.X_train = self.data.X_train.to(self.device)
        self.y_train = self.data.y_train.to(self.device)
        self.pools: list[SamplePool] = []
        if cfg.pool.size:
            for a in self.archs:
                g = WeightGraph.replicate(a, cfg.pool.size, device=self.device)
                w0, h0 = self._seed_states(g)
                self.pools.append(
                    SamplePool.filled(
                        w0.view(cfg.pool.size, -1), h0.view(cfg.pool.size, a.num_weights, -1)
                    )
                )
        self.step = 0
        self.loss_ema: float | None = None
        self.history: list[StepStats] = []

    # ------------------------------------------------------------------ pieces
    def _seed_states(self, graph) -> tuple[torch.Tensor, torch.Tensor]:
        return self.seed_init.state(graph, self.cfg.rule.hidden_channels, self.dev_gen)

    def lr_at(self, step: int) -> float:
        """Cosine decay from ``train.lr`` to ``train.lr_final`` (constant when unset)."""
        t = self.cfg.train
        if t.lr_final is None:
            return t.lr
        frac = min(step / max(t.steps, 1), 1.0)
        return t.lr_final + 0.5 * (t.lr - t.lr_final) * (1 + math.cos(math.pi * frac))

    def _batch(self, i: int) -> tuple[torch.Tensor | None, torch.Tensor, torch.Tensor]:
        """Pool indices (or None) and the starting ``w (B*E,)``, ``h (B*E, C)`` of arch ``i``."""
        cfg, graph = self.cfg, self.graphs[i]
        b = cfg.train.batch_size
        w_seed, h_seed = self._seed_states(graph)
        if not self.pools:
            return None, w_seed, h_seed
        pool = self.pools[i]
        idx = pool.sample(b, self.gen)  # worst first
        e = self.archs[i].num_weights
        w = pool.w[idx.to(pool.w.device)]  # (B, E)
        h = pool.h[idx.to(pool.h.device)]  # (B, E, C)
        n_fresh = cfg.pool.fresh if cfg.pool.replace_worst else 0
        if n_fresh:
            w = torch.cat([w_seed.view(b, e)[:n_fresh], w[n_fresh:]])
            h = torch.cat([h_seed.view(b, e, -1)[:n_fresh], h[n_fresh:]])
        w = w.reshape(-1)
        h = h.reshape(b * e, -1)
        if cfg.pool.damage:
            which = torch.zeros(b, dtype=torch.bool, device=self.device)
            which[b - cfg.pool.damage :] = True  # the lowest-loss samples sit last
            which[:n_fresh] = False
            w = zero_out(
                graph, w, fraction=cfg.pool.damage_fraction, which=which, generator=self.dev_gen
            )
        return idx, w, h

    def _data_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        bs = self.cfg.data.batch_size
        n = self.X_train.shape[0]
        if bs is None or bs >= n:
            return self.X_train, self.y_train
        idx = torch.randperm(n, generator=self.gen)[:bs].to(self.device)
        return self.X_train[idx], self.y_train[idx]

    def _unroll(self, graph, w, h, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        bf16 = self.cfg.train.precision == "bf16"  # the rule's MLP under bf16 autocast
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=bf16):
            for _ in range(k):
                mask = self._fire_mask(w)
                if self.cfg.train.checkpointing:
                    w, h = activation_checkpoint(
                        self._rule_step, graph, w, h, mask, use_reentrant=False
                    )
                else:
                    w, h = self.rule(graph, w, h, mask=mask)
        return w, h

    def _rule_step(self, graph, w, h, mask):
        return self.rule(graph, w, h, mask=mask)

    def _fire_mask(self, w: torch.Tensor) -> torch.Tensor:
        """``(E,)`` fire mask of one rule step (a distributed rank takes its slice)."""
        return self.rule.fire_mask(w.shape[0], w.device, self.dev_gen)

    def _step_stats(self, loss: torch.Tensor, accs: list[torch.Tensor]) -> tuple[float, float]:
        """The meta-step's loss and mean accuracy (averaged over the ranks when distributed)."""
        return float(loss), float(torch.cat(accs).mean())

    def _sync_grads(self) -> None:
        """Average the rule's gradients over the ranks of a distributed run (no-op here)."""

    # ------------------------------------------------------------------ one meta-step
    def meta_step(self) -> StepStats:
        """Run one meta-step and return its statistics."""
        cfg = self.cfg
        t = cfg.train
        self.rule.train()
        lr = self.lr_at(self.step)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        k = int(torch.randint(t.k_min, t.k_max + 1, (1,), generator=self.gen))
        X, y = self._data_batch()
        losses, accs, finals = [], [], []
        for i, graph in enumerate(self.graphs):
            idx, w, h = self._batch(i)
            w, h = self._unroll(graph, w, h, k)
            # one forward pass gives both the loss and the logged accuracy
            logits = task_forward(graph, w, X, cfg.task.activation, fan_in_ref=cfg.task.fan_in_ref)
            per_net = logits_cross_entropy(logits, y)  # (B,)
            losses.append(per_net)
            accs.append(logits_accuracy(logits.detach(), y))
            finals.append((idx, w, h, per_net))
        loss = torch.stack([lo.mean() for lo in losses]).mean()
        loss_v, acc = self._step_stats(loss.detach(), accs)
        skipped = not math.isfinite(loss_v) or (
            self.loss_ema is not None and loss_v > t.rollback_factor * self.loss_ema
        )
        self.optimizer.zero_grad(set_to_none=True)
        if not skipped:
            loss.backward()
            self._sync_grads()
            grads_ok = all(
                p.grad is None or bool(torch.isfinite(p.grad).all()) for p in self.rule.parameters()
            )
            skipped = not grads_ok
        if not skipped:
            self._process_grads()
            self.optimizer.step()
            self.loss_ema = (
                loss_v if self.loss_ema is None else 0.95 * self.loss_ema + 0.05 * loss_v
            )
            for i, (idx, w, h, per_net) in enumerate(finals):
                if idx is not None:
                    e = self.archs[i].num_weights
                    b = idx.shape[0]  # train.batch_size, or a rank's share of it
                    self.pools[i].commit(idx, w.view(b, e), h.view(b, e, -1), per_net)
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        stats = StepStats(self.step, loss_v, acc, k, lr, skipped)
        self.history.append(stats)
        return stats

    def _process_grads(self) -> None:
        mode = self.cfg.train.grad
        params = [p for p in self.rule.parameters() if p.grad is not None]
        if mode == "normalize":
            for p in params:
                p.grad = p.grad / (p.grad.norm() + 1e-8)
        elif mode == "clip":
            torch.nn.utils.clip_grad_norm_(params, self.cfg.train.grad_clip)

    # ------------------------------------------------------------------ evaluation
    def evaluate(
        self, num: int | None = None, horizons: tuple[int, ...] | None = None, split: str = "test"
    ) -> dict:
        """Grow ``num`` nets per training architecture; accuracy at each horizon.

        Default horizons: ``k_max`` and ``10 * k_max``.
        """
        num = num or self.cfg.train.eval_nets
        k = self.cfg.train.k_max
        horizons = horizons or (k, 10 * k)
        X = self.data.X_test if split == "test" else self.data.X_train
        y = self.data.y_test if split == "test" else self.data.y_train
        X, y = X.to(self.device), y.to(self.device)
        gen = torch.Generator(device=self.device).manual_seed(self.cfg.train.seed + 12345)
        out = {}
        for arch in self.archs:
            res = grow(
                self.rule,
                arch,
                num,
                max(horizons),
                self.init,
                device=self.device,
                generator=gen,
                metric=lambda g, w: accuracy(
                    g, w, X, y, self.cfg.task.activation, self.cfg.task.fan_in_ref
                ),
                record_at=horizons,
            )
            assert res.curve is not None
            out[arch.describe()] = {
                str(s): {
                    "mean": float(res.curve[i].mean()),
                    "min": float(res.curve[i].min()),
                    "max": float(res.curve[i].max()),
                }
                for i, s in enumerate(res.curve_steps)
            }
        return out

    # ------------------------------------------------------------------ persistence
    def state_dict(self) -> dict:
        return {
            "config": config_to_dict(self.cfg),
            "rule_config": self.rule.config(),
            "rule": {k: v.cpu() for k, v in self.rule.state_dict().items()},
            "optimizer": self.optimizer.state_dict(),
            "pools": [p.state_dict() for p in self.pools],
            "step": self.step,
            "loss_ema": self.loss_ema,
            "rng": {
                "gen": self.gen.get_state(),
                "dev_gen": self.dev_gen.get_state().cpu(),
                "torch": torch.get_rng_state(),
            },
        }

    def load_state_dict(self, d: dict) -> None:
        self.rule.load_state_dict(d["rule"])
        self.optimizer.load_state_dict(d["optimizer"])
        if len(d["pools"]) != len(self.pools):
            raise ValueError("the checkpoint's pools do not match the configuration")
        self.pools = [SamplePool.from_state_dict(p, self.device) for p in d["pools"]]
        self.step = int(d["step"])
        self.loss_ema = d["loss_ema"]
        self.gen.set_state(d["rng"]["gen"])
        self.dev_gen.set_state(d["rng"]["dev_gen"].to(self.dev_gen.get_state().device))
        torch.set_rng_state(d["rng"]["torch"])

    def save(self, path: str | os.PathLike) -> None:
        """Write a checkpoint atomically."""
        save_checkpoint(path, self.state_dict())

    # ------------------------------------------------------------------ the loop
    def train(
        self,
        run_dir: str | os.PathLike | None = None,
        *,
        progress: bool = True,
        callback: Callable[[StepStats], None] | None = None,
        log_lines: bool = False,
    ) -> list[StepStats]:
        """Meta-train until ``train.steps``; log, checkpoint and show progress.

        With ``run_dir``: appends to ``metrics.csv``, writes ``last.pt`` every
        ``train.checkpoint_every`` steps and at the end, and TensorBoard events when the
        ``tensorboard`` package is installed. Without a progress bar, ``log_lines`` prints one
        line per logged step to stderr instead.
        """
        t = self.cfg.train
        run = Path(run_dir) if run_dir is not None else None
        writer = _tensorboard(run) if run is not None and self.is_main else None
        metrics = _MetricsCSV(run / "metrics.csv") if run is not None and self.is_main else None
        bar = None
        if progress and self.is_main:
            from tqdm.auto import tqdm

            bar = tqdm(total=t.steps, initial=self.step, desc="meta-train", unit="step")
        start = time.perf_counter()
        window: list[StepStats] = []
        try:
            while self.step < t.steps:
                s = self.meta_step()
                window.append(s)
                if callback is not None:
                    callback(s)
                if s.step % t.log_every == 0 or s.step == t.steps:
                    ok = [x for x in window if not x.skipped] or window
                    loss = sum(x.loss for x in ok) / len(ok)
                    acc = sum(x.accuracy for x in ok) / len(ok)
                    skipped = sum(x.skipped for x in window)
                    if metrics is not None:
                        metrics.write(s.step, loss, acc, s.lr, skipped, time.perf_counter() - start)
                    if writer is not None:
                        writer.add_scalar("train/loss", loss, s.step)
                        writer.add_scalar("train/accuracy", acc, s.step)
                    if bar is not None:
                        bar.set_postfix(loss=f"{loss:.3f}", acc=f"{acc:.3f}", skipped=skipped)
                    elif log_lines and self.is_main:
                        print(
                            f"meta-step {s.step}/{t.steps}  loss {loss:.4f}  acc {acc:.3f}  "
                            f"skipped {skipped}  {time.perf_counter() - start:.0f}s",
                            file=sys.stderr,
                            flush=True,
                        )
                    window = []
                if bar is not None:
                    bar.update(1)
                if run is not None and (s.step % t.checkpoint_every == 0 or s.step == t.steps):
                    self.save(run / "last.pt")
        finally:
            if bar is not None:
                bar.close()
            if writer is not None:
                writer.close()
        return self.history

    @classmethod
    def from_checkpoint(
        cls,
        path: str | os.PathLike,
        dataset: Dataset | None = None,
        device: torch.device | None = None,
        cfg: Config | None = None,
        archs: Sequence[Architecture] | None = None,
    ) -> MetaTrainer:
        """Rebuild a trainer from ``last.pt`` to resume it exactly.

        ``cfg`` may differ from the saved configuration in ``train.steps`` only.
        """
        d = load_checkpoint(path)
        if "optimizer" not in d or "config" not in d:
            raise ValueError(f"{path} is a gnca checkpoint but not a training checkpoint")
        saved = config_from_dict(d["config"])
        if cfg is not None:
            a, b = config_to_dict(cfg), config_to_dict(saved)
            a["train"]["steps"] = b["train"]["steps"]
            diff = _dict_diff(a, b)
            if diff:
                raise ValueError(
                    f"the config does not match the checkpoint {path}: {', '.join(diff[:5])} differ"
                )
            saved = cfg
        trainer = cls(saved, dataset, device, archs)
        trainer.load_state_dict(d)
        return trainer


def _dict_diff(a: dict, b: dict, prefix: str = "") -> list[str]:
    out = []
    for key in sorted(set(a) | set(b)):
        va, vb = a.get(key), b.get(key)
        name = f"{prefix}{key}"
        if isinstance(va, dict) and isinstance(vb, dict):
            out += _dict_diff(va, vb, name + ".")
        elif va != vb:
            out.append(name)
    return out


class _MetricsCSV:
    FIELDS = ("step", "loss", "accuracy", "lr", "skipped", "seconds")

    def __init__(self, path: Path) -> None:
        self.path = path
        if not path.exists():
            with open(path, "w", newline="") as f:
                csv.writer(f).writerow(self.FIELDS)

    def write(self, *row: float) -> None:
        with open(self.path, "a", newline="") as f:
            csv.writer(f).writerow([f"{x:.6g}" if isinstance(x, float) else x for x in row])


def _tensorboard(run: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except Exception:  # tensorboard not installed
        return None
    return SummaryWriter(str(run / "tb"))


def load_rule(
    path: str | os.PathLike, map_location: str | torch.device = "cpu"
) -> tuple[LocalRule, Config]:
    """Load a trained rule and its configuration from a checkpoint."""
    d = load_checkpoint(path, map_location=map_location)
    for key in ("rule", "rule_config", "config"):
        if key not in d:
            raise ValueError(f"{path} is a gnca checkpoint without {key!r}; it holds no rule")
    cfg = config_from_dict(d["config"])
    rule = LocalRule(**d["rule_config"])
    try:
        rule.load_state_dict(d["rule"])
    except RuntimeError as err:
        first = str(err).strip().splitlines()[0]
        raise ValueError(
            f"{path}: the rule weights do not match its configuration ({first})"
        ) from None
    return rule, cfg
