"""Metrics and losses on the real AVA sample (vote counts from the public AVA labels)."""

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import stats

from cskd.losses import emd_loss, kl_loss
from cskd.metrics import binary_accuracy, emd, iaa_metrics, mean_score, plcc, srcc

AVA = Path(__file__).parent / "data" / "AVA_sample.txt"


@pytest.fixture(scope="module")
def votes():
    v = np.loadtxt(AVA, usecols=range(2, 12), dtype=np.int64)
    assert v.shape[1] == 10 and len(v) > 2000
    return v


def test_mean_score_of_vote_counts(votes):
    m = mean_score(votes)
    manual = (votes * np.arange(1, 11)).sum(1) / votes.sum(1)
    np.testing.assert_allclose(m, manual)
    assert ((m > 1) & (m < 10)).all()
    # AVA's mean scores sit around 5.4 with most images between 4 and 7
    assert 5.0 < m.mean() < 5.8


def test_perfect_prediction(votes):
    m = mean_score(votes)
    res = iaa_metrics(m, m, votes, votes)
    assert res["srcc"] == pytest.approx(1.0) and res["plcc"] == pytest.approx(1.0)
    assert res["acc"] == 1.0 and res["emd1"] == 0.0 and res["emd2"] == 0.0


def test_noisy_prediction_matches_scipy(votes):
    rng = np.random.default_rng(1)
    true = mean_score(votes)
    pred = true + rng.normal(scale=0.5, size=len(true))
    assert srcc(pred, true) == pytest.approx(stats.spearmanr(pred, true).statistic, abs=1e-12)
    assert plcc(pred, true) == pytest.approx(stats.pearsonr(pred, true).statistic, abs=1e-12)
    acc = binary_accuracy(pred, true)
    assert acc == pytest.approx(np.mean((pred > 5) == (true > 5)))
    assert 0.5 < acc < 1.0


def test_emd_metric_and_loss_agree_on_ava(votes):
    true = votes / votes.sum(1, keepdims=True)
    uniform = np.full_like(true, 0.1)
    for r in (1, 2):
        metric = emd(uniform, votes, r=r)  # counts are normalised by the metric
        loss = emd_loss(torch.tensor(uniform), torch.tensor(true), r=r).item()
        assert metric == pytest.approx(loss, rel=1e-10)
    # r=1 <= r=2 per sample (power means), so also on average
    assert emd(uniform, true, r=1) < emd(uniform, true, r=2)


def test_emd_loss_trains_towards_target(votes):
    """A few gradient steps on free logits reduce EMD to the AVA histograms (the loss is usable)."""
    true = torch.tensor(votes[:64] / votes[:64].sum(1, keepdims=True), dtype=torch.float32)
    logits = torch.zeros(64, 10, requires_grad=True)
    opt = torch.optim.Adam([logits], lr=0.1)
    first = None
    for _ in range(100):
        loss = emd_loss(torch.softmax(logits, -1), true)
        first = loss.item() if first is None else first
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.5 * first
    assert kl_loss(logits.detach(), true).item() < kl_loss(torch.zeros(64, 10), true).item()


def test_constant_and_mismatch():
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        assert np.isnan(srcc([1, 2, 3], [5, 5, 5]))
    assert any("SRCC is undefined" in str(x.message) for x in w)
    with pytest.raises(ValueError, match="length mismatch"):
        plcc([1, 2, 3], [1, 2])
    with pytest.raises(ValueError, match="shape mismatch"):
        emd(np.ones((3, 10)), np.ones((2, 10)))
