"""Exit signals against hand-computed numbers (spec §4)."""

import math

import numpy as np
import pytest
import torch

from analysis.signals import distance_ratio, edr, exit_signals, normalized_entropy, pairwise_distance, r1_r2


def test_normalized_entropy_hand_computed():
    # uniform over 2 and over 3 classes -> 1; p = (0.75, 0.25): -(.75 ln .75 + .25 ln .25) / ln 2 = 0.811278
    logits = torch.tensor([[0.0, 0.0], [math.log(3.0), 0.0], [50.0, -50.0]])
    assert normalized_entropy(logits).tolist() == pytest.approx([1.0, 0.8112781245, 0.0], abs=1e-6)
    assert normalized_entropy(torch.zeros(1, 3)).item() == pytest.approx(1.0)


def test_distance_ratio_hand_computed():
    r1 = torch.tensor([1.0, 3.0, 2.0, 0.0, 0.0])
    r2 = torch.tensor([3.0, 1.0, 2.0, 2.0, 0.0])
    # 0.5 (1 + (1-3)/3) = 1/6;  0.5 (1 + 2/3) = 5/6;  tie = 0.5;  r1 = 0 -> 0;  both 0 -> 0.5 (guarded)
    assert distance_ratio(r1, r2).tolist() == pytest.approx([1 / 6, 5 / 6, 0.5, 0.0, 0.5], abs=1e-6)


def test_distance_ratio_accepts_numpy():
    out = distance_ratio(np.array([1.0, 3.0]), np.array([3.0, 1.0]))
    assert isinstance(out, np.ndarray) and out.tolist() == pytest.approx([1 / 6, 5 / 6])


def test_edr_hand_computed():
    dr, ent = torch.tensor([0.2, 0.0, 0.5]), torch.tensor([0.4, 0.7, 0.0])
    # lambda 1: 2 / (1/0.2 + 1/0.4) = 2 / 7.5;  either signal 0 -> 0
    assert edr(dr, ent, 1.0).tolist() == pytest.approx([2 / 7.5, 0.0, 0.0], abs=1e-6)
    assert edr(dr, ent, 3.0)[0].item() == pytest.approx(4 / (15 + 2.5), abs=1e-6)
    assert edr(dr, ent, 0.0)[0].item() == pytest.approx(0.4, abs=1e-6)  # lambda -> 0: entropy alone
    assert edr(dr, ent, 1e6)[0].item() == pytest.approx(0.2, abs=1e-4)  # large lambda: DR alone
    with pytest.raises(ValueError):
        edr(dr, ent, -1.0)


def test_edr_lies_between_its_inputs():
    rng = np.random.default_rng(0)
    dr, ent = rng.uniform(0.01, 1, 1000), rng.uniform(0.01, 1, 1000)
    for lam in (0.1, 1.0, 5.0):
        value = edr(dr, ent, lam)
        assert np.all(value >= np.minimum(dr, ent) - 1e-9) and np.all(value <= np.maximum(dr, ent) + 1e-9)


def test_r1_r2_use_the_predicted_class():
    d = torch.tensor([[1.0, 3.0, 2.0], [1.0, 3.0, 2.0]])
    r1, r2 = r1_r2(d, torch.tensor([0, 1]))
    assert r1.tolist() == [1.0, 3.0] and r2.tolist() == [2.0, 1.0]


def test_pairwise_distances_hand_computed():
    e = torch.tensor([[0.0, 0.0], [1.0, 0.0]])
    c = torch.tensor([[3.0, 4.0], [0.0, 1.0]])
    expected = np.array([[5.0, 1.0], [math.sqrt(20), math.sqrt(2)]])
    np.testing.assert_allclose(pairwise_distance(e, c, "euclidean").numpy(), expected, atol=1e-5)
    np.testing.assert_allclose(pairwise_distance(e, c, "sqeuclidean").numpy(), expected**2, atol=1e-4)
    cos = pairwise_distance(torch.tensor([[1.0, 0.0]]), torch.tensor([[2.0, 0.0], [0.0, 3.0], [-1.0, 0.0]]), "cosine")
    np.testing.assert_allclose(cos.numpy(), [[0.0, 1.0, 2.0]], atol=1e-6)
    with pytest.raises(ValueError):
        pairwise_distance(e, c, "manhattan")


def test_exit_signals_bundle():
    logits = torch.tensor([[[2.0, 0.0, 0.0]]])  # (L=1, B=1, K=3)
    dist = torch.tensor([[[1.0, 3.0, 2.0]]])
    s = exit_signals(logits, dist)
    assert s.pred.item() == 0 and s.r1.item() == 1.0 and s.r2.item() == 2.0
    assert s.dr.item() == pytest.approx(0.5 * (1 - 1 / 2))
    assert s.max_prob.item() == pytest.approx(math.exp(2) / (math.exp(2) + 2))


def test_distances_do_not_depend_on_the_batch():
    # large-norm embeddings near their prototypes: the expanded form ||e||^2 - 2e.c + ||c||^2 cancels in float32
    # and its rounding changes with the batch; a trace (batched) and an early-exit run (alone) must agree
    g = torch.Generator().manual_seed(0)
    protos = 200 + torch.randn(3, 384, generator=g)
    emb = protos[torch.tensor([0, 1, 2, 0] * 16)] + 0.05 * torch.randn(64, 384, generator=g)
    batched = pairwise_distance(emb, protos)
    alone = torch.stack([pairwise_distance(e[None], protos)[0] for e in emb])
    assert torch.allclose(batched, alone, rtol=1e-5, atol=1e-5)
    exact = (emb.double()[:, None] - protos.double()[None]).norm(dim=-1)
    assert torch.allclose(batched.double(), exact, rtol=1e-4)
