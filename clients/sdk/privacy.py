"""Privacy on the merchant's side of the wire.

Local differential privacy, for merchants who trust nobody: clip this merchant's change to the
global model and add Gaussian noise *before* it leaves the shop. The noise comes from a
generator seeded by the operating system's cryptographic source unless a generator is passed
(tests). With ``noise_multiplier`` sigma, each upload is the Gaussian mechanism with
sensitivity ``clip_norm`` on this merchant's data.

Client-side clipping for central DP: when a round's training hints carry ``dp_clip_norm`` (the
model clips on the client, as secure aggregation needs), the change is clipped to it before
upload and the metric ``dp_within_clip`` (1.0 or 0.0) tells the server whether it was within
the norm -- adaptive clipping counts those flags, with noise, to move the norm.
"""

from __future__ import annotations

import logging
import math
import secrets
from collections.abc import Mapping
from typing import Any

import numpy as np

from clients.sdk.training import Trainer, TrainResult

ROUND_CLIP_HINT = "dp_clip_norm"
WITHIN_CLIP_METRIC = "dp_within_clip"


logger = logging.getLogger("flportal.client.privacy")


def privatize(
    weights: Mapping[str, np.ndarray],
    base: Mapping[str, np.ndarray],
    *,
    clip_norm: float,
    noise_multiplier: float,
    rng: np.random.Generator | None = None,
) -> tuple[dict[str, np.ndarray], dict[str, float]]:
    """base + clip(weights - base, clip_norm) + N(0, (noise_multiplier * clip_norm)^2 I)."""
    if not (math.isfinite(clip_norm) and clip_norm > 0):
        raise ValueError("clip_norm must be a positive number")
    if not (math.isfinite(noise_multiplier) and noise_multiplier >= 0):
        raise ValueError("noise_multiplier must be >= 0")
    rng = rng or np.random.default_rng(secrets.randbits(128))
    deltas, norm = _deltas(weights, base)
    scale = min(1.0, clip_norm / norm) if norm > 0 else 1.0
    std = noise_multiplier * clip_norm
    private = {
        name: (
            np.asarray(base[name], np.float64)
            + d * scale
            + (rng.normal(0.0, std, d.shape) if std > 0 else 0.0)
        ).astype(np.asarray(weights[name]).dtype)
        for name, d in deltas.items()
    }
    return private, {"local_dp_norm": norm, "local_dp_clipped": float(scale < 1.0)}


def clip_to_round(
    result: TrainResult, base: Mapping[str, np.ndarray], hints: Mapping[str, Any]
) -> TrainResult:
    """Clip the trained change to the round's ``dp_clip_norm`` hint, if the round sends one,
    and report whether it was within the norm (``dp_within_clip``); otherwise unchanged."""
    clip_norm = hints.get(ROUND_CLIP_HINT)
    if clip_norm is None:
        return result
    clip_norm = float(clip_norm)
    if not (math.isfinite(clip_norm) and clip_norm > 0):
        raise ValueError(f"{ROUND_CLIP_HINT} must be a positive number")
    deltas, norm = _deltas(result.weights, base)
    within = norm <= clip_norm
    scale = 1.0 if within else clip_norm / norm
    clipped = {
        name: (np.asarray(base[name], np.float64) + d * scale).astype(
            np.asarray(result.weights[name]).dtype
        )
        for name, d in deltas.items()
    }
    metrics = {**result.metrics, WITHIN_CLIP_METRIC: 1.0 if within else 0.0}
    return TrainResult(clipped, result.num_examples, metrics)


def _deltas(
    weights: Mapping[str, np.ndarray], base: Mapping[str, np.ndarray]
) -> tuple[dict[str, np.ndarray], float]:
    """The change to the global model per tensor (float64) and its L2 norm over all tensors."""
    deltas = {
        name: np.asarray(w, np.float64) - np.asarray(base[name], np.float64)
        for name, w in weights.items()
    }
    norm = math.sqrt(sum(float(np.dot(d.ravel(), d.ravel())) for d in deltas.values()))
    return deltas, norm


def with_local_dp(
    trainer: Trainer,
    *,
    clip_norm: float,
    noise_multiplier: float,
    rng: np.random.Generator | None = None,
) -> Trainer:
    """Wrap a trainer so every update it returns is clipped and noised locally."""

    def train(weights: Mapping[str, np.ndarray], hints: Mapping[str, Any]) -> TrainResult:
        result = trainer(weights, hints)
        private, info = privatize(
            result.weights, weights, clip_norm=clip_norm, noise_multiplier=noise_multiplier, rng=rng
        )
        # the raw norm and whether it was clipped stay in the shop: sent along, they would
        # leak exactly what the noise hides
        logger.info(
            "local DP: change norm %.4g, clipped %s",
            info["local_dp_norm"],
            bool(info["local_dp_clipped"]),
        )
        return TrainResult(private, result.num_examples, dict(result.metrics))

    evaluate = getattr(trainer, "evaluate", None)
    if evaluate is not None:
        train.evaluate = evaluate  # type: ignore[attr-defined]
    return train
