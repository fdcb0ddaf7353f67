"""User-level differential privacy for FedAvg (DP-FedAvg, McMahan et al. 2018) and its
accounting with Google's ``dp-accounting`` (RDP or PLD), never a home-made formula.

Each merchant's change to the global model is clipped to L2 norm C; the clipped changes are
averaged with equal weight (so one merchant moves the sum by at most C); Gaussian noise of
standard deviation sigma*C is added to the sum. The noise comes from the ``rng`` the caller passes:
the portal seeds it from the operating system's cryptographic source, tests from a fixed seed.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

import numpy as np

from rounds.aggregation.clipping import clip, clip_report
from rounds.aggregation.core import AggregationError, Tensors, reference_specs
from rounds.aggregation.fedavg import fedavg

ACCOUNTANTS = ("rdp", "pld")


def dp_fedavg(
    updates: Sequence[Tensors],
    *,
    current: Tensors,
    clip_norm: float,
    noise_multiplier: float,
    rng: np.random.Generator,
) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """current + (sum_k clip(w_k - current) + N(0, (sigma*C)^2 I)) / K."""
    if noise_multiplier < 0:
        raise AggregationError("noise_multiplier must be >= 0.", code="invalid_privacy")
    specs = reference_specs([current, *updates])
    clipped, norms = clip(updates, reference=current, max_norm=clip_norm)
    mean = fedavg(clipped, [1.0] * len(updates))
    count = len(updates)
    std = noise_multiplier * clip_norm / count
    noisy = {}
    for spec in specs:
        noise = rng.normal(0.0, std, size=spec.shape) if std > 0 else 0.0
        noisy[spec.name] = (mean[spec.name].astype(np.float64) + noise).astype(spec.dtype)
    info = {
        "clipped": clip_report(norms, clip_norm)["clipped"],
        "noise_std": float(std),
        "clip_norm": float(clip_norm),
        "noise_multiplier": float(noise_multiplier),
    }
    return noisy, info


def epsilon(
    rounds: Sequence[tuple[float, float]], *, delta: float, accountant: str = "rdp"
) -> float:
    """ε spent after ``rounds`` of (sampling rate q, noise multiplier sigma), at this δ."""
    from dp_accounting import dp_event, pld, rdp  # heavy: imported only when accounting

    if accountant not in ACCOUNTANTS:
        raise AggregationError(f"accountant must be one of {ACCOUNTANTS}.", code="invalid_privacy")
    if not rounds:
        return 0.0
    tracker = rdp.RdpAccountant() if accountant == "rdp" else pld.PLDAccountant()
    for (q, sigma), count in Counter(rounds).items():  # composition is order-free: batch it
        if sigma <= 0:
            return float("inf")  # no noise: no privacy
        gaussian = dp_event.GaussianDpEvent(sigma)
        event = gaussian if q >= 1.0 else dp_event.PoissonSampledDpEvent(q, gaussian)
        tracker.compose(event, count)
    return float(tracker.get_epsilon(delta))


def noise_for_budget(
    *, epsilon_budget: float, rounds: int, q: float, delta: float, accountant: str = "rdp"
) -> float:
    """The smallest noise multiplier (to 1e-3) that keeps ``rounds`` rounds within budget."""
    low, high = 0.05, 100.0
    if epsilon([(q, high)] * rounds, delta=delta, accountant=accountant) > epsilon_budget:
        raise AggregationError("No noise level fits this budget.", code="invalid_privacy")
    while high - low > 1e-3:
        middle = (low + high) / 2
        spent = epsilon([(q, middle)] * rounds, delta=delta, accountant=accountant)
        low, high = (middle, high) if spent > epsilon_budget else (low, middle)
    return high
