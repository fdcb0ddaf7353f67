"""Local DP in the SDK: the change leaving the shop is clipped and noised (no Django)."""

from __future__ import annotations

import numpy as np
import pytest

from clients.sdk.privacy import privatize, with_local_dp
from clients.sdk.training import EvalResult, TrainResult

BASE = {"w": np.zeros(4, np.float32), "b": np.zeros(1, np.float32)}


def test_a_large_change_is_clipped_to_the_bound_and_a_small_one_is_kept():
    big = {"w": np.full(4, 3.0, np.float32), "b": np.full(1, 4.0, np.float32)}
    clipped, info = privatize(big, BASE, clip_norm=1.0, noise_multiplier=0.0)
    norm = np.sqrt(sum(np.sum(v.astype(np.float64) ** 2) for v in clipped.values()))
    assert norm == pytest.approx(1.0, rel=1e-6) and info["local_dp_clipped"] == 1.0
    small = {"w": np.full(4, 0.1, np.float32), "b": np.zeros(1, np.float32)}
    kept, info = privatize(small, BASE, clip_norm=1.0, noise_multiplier=0.0)
    np.testing.assert_allclose(kept["w"], small["w"])
    assert info["local_dp_clipped"] == 0.0


def test_the_noise_has_standard_deviation_sigma_times_the_clip():
    base = {"w": np.zeros(100_000, np.float32)}
    noisy, _ = privatize(
        base, base, clip_norm=0.5, noise_multiplier=2.0, rng=np.random.default_rng(1)
    )
    assert np.std(noisy["w"]) == pytest.approx(1.0, rel=0.02)
    assert noisy["w"].dtype == np.float32


@pytest.mark.parametrize(
    ("clip", "noise"), [(0.0, 1.0), (-1.0, 1.0), (1.0, -0.5), (float("nan"), 1.0)]
)
def test_invalid_settings_are_refused(clip, noise):
    with pytest.raises(ValueError):
        privatize(BASE, BASE, clip_norm=clip, noise_multiplier=noise)


def test_the_wrapper_privatizes_every_update_and_keeps_evaluation():
    def trainer(weights, hints):
        return TrainResult({k: v + 10 for k, v in weights.items()}, 7, {"loss": 0.5})

    trainer.evaluate = lambda weights: EvalResult(3, {"auc": 0.6})
    private = with_local_dp(trainer, clip_norm=1.0, noise_multiplier=0.0)
    result = private(BASE, {"round": 1})
    assert result.num_examples == 7 and result.metrics == {"loss": 0.5}  # no norm leaks
    assert np.sqrt(
        sum(np.sum(v.astype(np.float64) ** 2) for v in result.weights.values())
    ) == pytest.approx(1.0, rel=1e-6)
    assert private.evaluate(BASE).metrics == {"auc": 0.6}
    assert BASE["w"].sum() == 0  # the received weights are untouched
