"""Per-net task augmentations: feature transforms and class subsets (gnca.augment)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import tiny_config

from gnca import Architecture, WeightGraph
from gnca import augment as A
from gnca.cli import main
from gnca.config import ConfigError, config_from_dict, config_to_dict, load_config
from gnca.data import load_dataset
from gnca.forward import task_forward
from gnca.senses import SENSES, SenseReader, dense_senses, neuron_stats, weight_senses
from gnca.state import initial_state
from gnca.task import Task, logits_accuracy, logits_cross_entropy
from gnca.trainer import MetaTrainer

ALL = list(SENSES)
REPO = Path(__file__).resolve().parents[1]


def senses_config(**train):
    d = config_to_dict(tiny_config(**train))
    d["rule"]["senses"] = ALL
    d["rule"]["sense_batch"] = 16
    return config_from_dict(d)


def params(tr: MetaTrainer) -> list[torch.Tensor]:
    return [p.detach().clone() for p in tr.rule.parameters()]


def _state(sizes, g=3, seed=0):
    graph = WeightGraph.replicate(Architecture.mlp(sizes), g)
    gen = torch.Generator().manual_seed(seed)
    w, _ = initial_state(graph, 4, "random", generator=gen)
    h = torch.randn(w.shape[0], 4, generator=gen, dtype=torch.float64)
    return graph, w.double(), h


# ---------------------------------------------------------------------- defaults are bitwise
@pytest.mark.parametrize("permute", [False, True])
def test_default_keys_give_bitwise_the_same_meta_training(permute, monkeypatch):
    """Absent keys, explicit defaults, and the augmented code path with nothing drawn (an
    identity NetAugment) give the same rule. (Against the commit before augmentations existed
    this was checked by hand: equal rule parameters after 4 meta-steps, both settings.)"""
    plain = senses_config(steps=3, permute_labels=permute)
    explicit = senses_config(steps=3, permute_labels=permute, feature_transform="none",
                             class_subsets=None)  # fmt: skip
    runs = []
    for cfg in (plain, explicit, plain):
        tr = MetaTrainer.from_config(cfg)
        if len(runs) == 2:  # the augmented path, as the identity
            drawn = tr.variants.for_batch

            def identity(*args, drawn=drawn, **kwargs):
                perm, _, _ = drawn(*args, **kwargs)
                return perm, A.NetAugment(perm), {}

            monkeypatch.setattr(tr.variants, "for_batch", identity)
        for _ in range(3):
            tr.meta_step()
        runs.append(params(tr))
    for other in runs[1:]:
        assert all(torch.equal(p, q) for p, q in zip(runs[0], other, strict=True))


# ---------------------------------------------------------------------- feature transforms
def test_feature_maps_are_permutations_and_orthogonal_matrices():
    seeds = A.draw_seeds(4, torch.Generator().manual_seed(0))
    perms = A.feature_maps(seeds, 6, "permute")
    assert perms.shape == (4, 6) and all(sorted(r.tolist()) == list(range(6)) for r in perms)
    R = A.feature_maps(seeds, 6, "orthogonal")
    assert R.shape == (4, 6, 6)
    torch.testing.assert_close(R.transpose(1, 2) @ R, torch.eye(6).expand(4, 6, 6), atol=1e-5,
                               rtol=0)  # fmt: skip
    assert torch.equal(R, A.feature_maps(seeds, 6, "orthogonal"))  # a seed is its matrix
    assert not torch.equal(R[0], R[1])


def _numpy_mlp(sizes, w: np.ndarray, X: np.ndarray) -> np.ndarray:
    """One MLP from its weight vector (Architecture.mlp layout: per layer a*b weights, then b
    biases), by loops over layers."""
    out, off = X, 0
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
        W, bias = w[off : off + a * b].reshape(a, b), w[off + a * b : off + a * b + b]
        off += a * b + b
        out = out @ W + bias
        if i < len(sizes) - 2:
            out = np.tanh(out)
    return out


@pytest.mark.parametrize("kind", ["permute", "orthogonal"])
@pytest.mark.parametrize("path", ["dense", "general"])
def test_a_net_under_R_equals_the_net_with_first_layer_R_w(kind, path):
    sizes = [4, 5, 3]
    graph, w, _ = _state(sizes)
    seeds = A.draw_seeds(3, torch.Generator().manual_seed(1))
    maps = A.feature_maps(seeds, 4, kind)
    R = maps.double() if kind == "orthogonal" else torch.eye(4)[:, maps].permute(1, 0, 2)
    aug = A.NetAugment(kind=kind, maps=maps if kind == "permute" else maps.double())
    X = torch.randn(7, 4, dtype=torch.float64)
    got = task_forward(graph, w, aug.inputs(X), path=path)  # (3, 7, 3)
    wn = w.view(3, -1).numpy()
    for i in range(3):
        w_rot = wn[i].copy()
        w_rot[:20] = (R[i].double().numpy() @ wn[i][:20].reshape(4, 5)).reshape(-1)
        np.testing.assert_allclose(got[i].numpy(), _numpy_mlp(sizes, w_rot, X.numpy()), rtol=1e-10)


def test_the_reader_reads_every_net_through_its_transform():
    task = Task(load_dataset("iris"))
    graph, w, h = _state([4, 5, 3])
    maps = A.feature_maps(A.draw_seeds(3, torch.Generator().manual_seed(2)), 4, "orthogonal")
    reader = SenseReader(ALL, task, 8, torch.Generator().manual_seed(0))
    reader.augment = A.NetAugment(kind="orthogonal", maps=maps)
    got = reader(graph, w, h)
    X, y = SenseReader(ALL, task, 8, torch.Generator().manual_seed(0)).batch(torch.device("cpu"))
    want = dense_senses([4, 5, 3], w, h[:, -1], X @ maps, y, ALL)
    torch.testing.assert_close(got, want.to(h.dtype))
    plain = SenseReader(ALL, task, 8, torch.Generator().manual_seed(0))(graph, w, h)
    assert not torch.allclose(got, plain)


# ---------------------------------------------------------------------- class subsets
def test_class_subsets_and_their_batches():
    gen = torch.Generator().manual_seed(0)
    classes = A.draw_classes(200, 5, 2, gen)
    m = classes.sum(1)
    assert classes.dtype == torch.uint8 and m.min() == 2 and m.max() == 5
    assert set(m.tolist()) == {2, 3, 4, 5}
    assert A.draw_classes(3, 2, 4, gen).sum(1).tolist() == [2, 2, 2]  # at most all classes
    y = torch.arange(30) % 5
    present = classes[:6].bool()
    for replacement in (False, True):
        idx = A.class_indices(y, present, 11, gen, replacement=replacement)
        assert idx.shape == (6, 11)
        assert bool(present.gather(1, y[idx]).all())  # only the net's own classes
    idx = A.class_indices(y, present, 6, gen, replacement=False)
    assert all(len(set(r)) == 6 for r in idx.tolist())  # no repeats while there are enough
    # a rank's rows of a draw for the whole batch are the same rows
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    whole = A.class_indices(y, present, 4, g1, replacement=True)
    half = A.class_indices(y, present[3:], 4, g2, replacement=True, offset=3, total=6)
    assert torch.equal(whole[3:], half)


def test_masked_classes_are_never_predicted_and_nothing_is_nan():
    logits = torch.randn(4, 9, 5) * 50
    logits[:, :, 1] = 1e6  # absent, and by far the largest
    present = torch.ones(4, 5, dtype=torch.bool)
    present[:, 1] = False
    present[0, 2:] = False  # net 0 learns classes 0 only... and 2 absent too: {0}
    present[0, 0] = True
    masked = A.mask_logits(logits, present)
    y = torch.zeros(4, 9, dtype=torch.long)
    assert not bool((masked.argmax(-1) == 1).any())
    assert logits_accuracy(masked, y)[0] == 1.0  # a one-class net is always right
    loss = logits_cross_entropy(masked.requires_grad_(), y)
    loss.sum().backward()
    assert torch.isfinite(loss).all() and torch.isfinite(masked.grad).all()
    assert float(masked.grad[:, :, 1].abs().sum()) == 0.0


@pytest.mark.parametrize("sizes", [[4, 5, 3], [4, 3, 3, 3]])
def test_senses_under_a_class_mask_dense_equals_general_and_absent_errors_are_zero(sizes):
    graph, w, h = _state(sizes)
    X = torch.randn(7, 4, dtype=torch.float64) * 30  # large logits
    mask = torch.tensor([[True, False, True], [False, True, True], [True, True, True]])
    y = torch.tensor([[0, 2, 2, 0, 0, 2, 0], [1, 2, 1, 1, 2, 2, 1], [0, 1, 2, 0, 1, 2, 0]])
    st = neuron_stats(graph, w, h[:, -1], X, y, "tanh", None, mask)
    general = weight_senses(graph, st, ALL, 3)
    dense = dense_senses(sizes, w, h[:, -1], X, y, ALL, "tanh", None, mask)
    torch.testing.assert_close(dense, general)
    assert torch.isfinite(general).all() and torch.isfinite(st.loss).all()
    out = graph.output_index.view(3, 3)
    absent = out[~mask]
    assert float(st.a[absent].abs().sum()) == 0.0  # softmax over the present classes
    assert float(st.m[absent].abs().sum()) == 0.0  # no error at absent classes
    unmasked = neuron_stats(graph, w, h[:, -1], X, y, "tanh", None)
    assert float((st.loss[:2] - unmasked.loss[:2]).abs().sum()) > 0


# ---------------------------------------------------------------------- in meta-training
def _augmented(**kw):
    return senses_config(steps=4, permute_labels=True, feature_transform="orthogonal",
                         class_subsets=2, **kw)  # fmt: skip


def test_pooled_samples_keep_their_transform_and_subset_fresh_ones_get_new_ones(monkeypatch):
    tr = MetaTrainer.from_config(_augmented())
    pool = tr.pools[0]
    assert pool.tags[A.FEATURE_SEED].shape == (16,) and pool.tags[A.CLASSES].shape == (16, 3)
    seen = {}
    batch, variants = tr.objective.batch, tr.variants.for_batch

    def spy_batch(i):
        out = batch(i)
        seen.update(got=out[0])
        return out

    def spy_variants(*args, **kwargs):
        out = variants(*args, **kwargs)
        seen.update(aug=out[1], tags=out[2])
        return out

    monkeypatch.setattr(tr.objective, "batch", spy_batch)
    monkeypatch.setattr(tr.variants, "for_batch", spy_variants)
    for _ in range(3):
        before = {k: v.clone() for k, v in tr.pools[0].tags.items()}
        s = tr.meta_step()
        assert not s.skipped and np.isfinite(s.loss)
        got, tags, aug = seen["got"], seen["tags"], seen["aug"]
        kept, renewed = got.idx[~got.renewed], got.idx[got.renewed]
        assert len(renewed) == 1  # pool.fresh = 1
        for k in tags:
            assert torch.equal(tr.pools[0].tags[k][kept], before[k][kept])  # kept
            assert torch.equal(tr.pools[0].tags[k][got.idx], tags[k])  # committed
        new = tr.pools[0].tags[A.FEATURE_SEED][renewed]  # (a subset may repeat by chance)
        assert not torch.equal(new, before[A.FEATURE_SEED][renewed])
        R = A.feature_maps(tags[A.FEATURE_SEED], 4, "orthogonal")
        assert torch.equal(aug.maps, R)  # the transform of the sample's seed
        mask = aug.output_mask
        assert torch.equal(mask.sum(1), aug.classes.sum(1))
        assert bool(mask.gather(1, aug.permutation).eq(aug.classes).all())


def test_meta_training_reads_through_the_transforms(monkeypatch):
    """With the transforms switched to the identity, the same draws give another loss."""
    a = MetaTrainer.from_config(_augmented())
    b = MetaTrainer.from_config(_augmented())
    monkeypatch.setattr(A.NetAugment, "inputs", lambda self, X: X)
    sa = a.meta_step()
    monkeypatch.undo()
    sb = b.meta_step()
    assert sa.loss != sb.loss


def test_resume_with_augmentations_is_exact(tmp_path):
    a = MetaTrainer.from_config(_augmented(checkpointing=True))
    for _ in range(2):
        a.meta_step()
    a.save(tmp_path / "last.pt")
    for _ in range(2):
        sa = a.meta_step()
    b = MetaTrainer.from_checkpoint(tmp_path / "last.pt")
    for k, v in a.pools[0].tags.items():
        assert k in b.pools[0].tags and v.dtype == b.pools[0].tags[k].dtype
    for _ in range(2):
        sb = b.meta_step()
    assert sa.loss == sb.loss
    assert all(torch.equal(p, q) for p, q in zip(params(a), params(b), strict=True))
    for k in a.pools[0].tags:
        assert torch.equal(a.pools[0].tags[k], b.pools[0].tags[k])


def test_without_pool_and_with_permute_features():
    d = config_to_dict(senses_config(steps=2, feature_transform="permute", class_subsets=3))
    d["pool"].update(size=0, fresh=0)
    tr = MetaTrainer.from_config(config_from_dict(d))
    assert not any(tr.meta_step().skipped for _ in range(2))


def test_two_datasets_with_augmentations():
    over = ["train.steps=2", "train.k_min=2", "train.k_max=2", "train.device=cpu",
            "pool.size=16", "rule.sense_batch=8", "train.batch_size=4"]  # fmt: skip
    tr = MetaTrainer.from_config(load_config(REPO / "configs" / "tabular_augmented.yaml", over))
    assert tr.pools[0].tags[A.CLASSES].shape == (16, 10)
    assert tr.pools[1].tags[A.CLASSES].shape == (16, 3)
    assert not any(tr.meta_step().skipped for _ in range(2))


# ---------------------------------------------------------------------- errors, CLI
def test_config_and_trainer_errors_are_one_line():
    bad = {
        "train.class_subsets=1": "train.class_subsets' must be >= 2",
        "train.feature_transform=rotate": "train.feature_transform' must be one of",
    }
    for over, msg in bad.items():
        with pytest.raises(ConfigError, match=msg) as err:
            load_config(REPO / "configs" / "tabular_augmented.yaml", [over])
        assert "\n" not in str(err.value)
    for kw in ({"feature_transform": "orthogonal"}, {"class_subsets": 2}):
        with pytest.raises(ValueError, match="needs a rule that reads data") as err:
            MetaTrainer.from_config(tiny_config(**kw))
        assert "\n" not in str(err.value)


def test_grow_and_eval_of_an_augmented_rule_are_on_the_plain_task(tmp_path, capsys):
    run = tmp_path / "run"
    cfg = REPO / "configs" / "tabular_augmented.yaml"
    over = ["train.steps=2", "train.k_min=2", "train.k_max=2", "train.device=cpu",
            "pool.size=8", "rule.sense_batch=8", "train.batch_size=4", "train.eval_nets=2",
            "train.log_every=1"]  # fmt: skip
    assert main(["train", "--config", str(cfg), "--out", str(run), "--no-progress",
                 "--set", *over]) == 0  # fmt: skip
    ckpt = str(run / "last.pt")
    assert main(["grow", "--checkpoint", ckpt, "--num", "2", "--steps", "2"]) == 0
    assert main(["grow", "--checkpoint", ckpt, "--num", "2", "--steps", "2",
                 "--set", "data.name=wine", "--arch", "h:8"]) == 0  # fmt: skip
    assert main(["eval", "--checkpoint", ckpt, "--num", "2"]) == 0
    out = capsys.readouterr().out
    assert "nan" not in out.lower()
