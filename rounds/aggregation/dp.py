"""User-level differential privacy for FedAvg (DP-FedAvg, McMahan et al. 2018) with fixed or
adaptive clipping (Andrew, Thakkar, McMahan, Ramaswamy 2021), and its accounting with Google's
``dp-accounting`` (RDP or PLD), never a home-made formula.

Each merchant's change to the global model is clipped to L2 norm C; the clipped changes are
averaged with equal weight (so one merchant moves the sum by at most C); Gaussian noise of
standard deviation z*C is added to the sum. The noise comes from the ``rng`` the caller passes:
the portal seeds it from the operating system's cryptographic source, tests from a fixed seed.

Adaptive clipping moves C towards the ``target_quantile`` gamma of the update norms: each round
also releases the noisy count of updates within C, b = (sum_k b_k + N(0, sigma_b^2)) / K, and the
next round clips at C * exp(-eta_C * (b - gamma)). The count is a second Gaussian query on the
same merchants, so the noise on the sum is raised from z to z_delta (Theorem 1 of the paper) to
keep the round's total cost at that of a fixed-clip round with noise multiplier z.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from rounds.aggregation.clipping import clip, clip_report
from rounds.aggregation.core import AggregationError, Tensors, reference_specs
from rounds.aggregation.fedavg import fedavg

ACCOUNTANTS = ("rdp", "pld")
CLIP_NORM_RANGE = (1e-6, 1e6)  # adaptive clipping keeps C within it
# A change clipped to C by its merchant may exceed C by float32 rounding when the server sees it.
CLIENT_CLIP_TOLERANCE = 1e-4

# One round for the accountant: (sampling rate q, noise multiplier on the sum) or, for a round
# with adaptive clipping, (q, z_delta, sigma_b of the count).
RoundEvent = tuple[float, float] | tuple[float, float, float | None]


@dataclass(frozen=True)
class AdaptiveClipping:
    """Quantile-based adaptive clipping (Andrew et al. 2021) for one round."""

    target_quantile: float  # gamma: the fraction of updates the clip norm should leave unclipped
    learning_rate: float  # eta_C of the geometric update
    count_stddev: float  # sigma_b: Gaussian noise on the count of updates within C


def dp_fedavg(
    updates: Sequence[Tensors],
    *,
    current: Tensors,
    clip_norm: float,
    noise_multiplier: float,
    rng: np.random.Generator,
    adaptive: AdaptiveClipping | None = None,
    within: Sequence[bool] | None = None,
) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """current + (sum_k clip(w_k - current) + N(0, (z*C)^2 I)) / K.

    With ``adaptive`` the sum is noised with z_delta instead of z (:func:`delta_noise_multiplier`)
    and the noisy fraction of updates within C gives the next round's clip norm
    (``next_clip_norm`` in the info). ``within`` replaces the server's own test norm <= C, one
    flag per update (client-side clipping: :func:`within_clip`).
    """
    if noise_multiplier < 0:
        raise AggregationError("noise_multiplier must be >= 0.", code="invalid_privacy")
    specs = reference_specs([current, *updates])
    clipped, norms = clip(updates, reference=current, max_norm=clip_norm)
    count = len(updates)
    sum_multiplier = noise_multiplier
    if adaptive is not None:
        sum_multiplier = delta_noise_multiplier(noise_multiplier, adaptive.count_stddev)
    mean = fedavg(clipped, [1.0] * count)
    std = sum_multiplier * clip_norm / count
    noisy = {}
    for spec in specs:
        noise = rng.normal(0.0, std, size=spec.shape) if std > 0 else 0.0
        noisy[spec.name] = (mean[spec.name].astype(np.float64) + noise).astype(spec.dtype)
    info: dict[str, Any] = {
        "clipping": "fixed" if adaptive is None else "adaptive",
        "noise_std": float(std),
        "clip_norm": float(clip_norm),
        "noise_multiplier": float(noise_multiplier),
    }
    if adaptive is None:
        return noisy, {**info, "clipped": clip_report(norms, clip_norm)["clipped"]}
    flags = within_clip(norms, clip_norm) if within is None else list(within)
    if len(flags) != count:
        raise AggregationError("One within-clip flag per update is needed.", code="flags_mismatch")
    fraction = noisy_fraction_within(sum(flags), count, count_stddev=adaptive.count_stddev, rng=rng)
    info |= {
        # only the noisy fraction is kept: the exact count of clipped updates would undo sigma_b
        "unclipped_fraction": fraction,
        "next_clip_norm": next_clip_norm(
            clip_norm,
            fraction,
            target_quantile=adaptive.target_quantile,
            learning_rate=adaptive.learning_rate,
        ),
        "target_quantile": float(adaptive.target_quantile),
        "delta_noise_multiplier": float(sum_multiplier),
        "clip_count_stddev": float(adaptive.count_stddev),
    }
    return noisy, info


def delta_noise_multiplier(noise_multiplier: float, count_stddev: float) -> float:
    """z_delta = (z^-2 - (2 sigma_b)^-2)^(-1/2): the noise multiplier on the sum of clipped
    changes that makes a round with adaptive clipping cost what a fixed-clip round with noise
    multiplier z costs (Andrew et al. 2021, Theorem 1).

    Why: a merchant adds its clipped change (L2 norm <= C) to the sum and b_k - 1/2 (absolute
    value 1/2) to the centred count of updates within C; with K known, releasing
    sum_k b_k + N(0, sigma_b^2) is the same as releasing sum_k (b_k - 1/2) + N(0, sigma_b^2).
    Divide the noisy sum by z_delta*C and the noisy count by sigma_b: both noises become N(0, 1)
    and one merchant moves the concatenated vector by at most sqrt(z_delta^-2 + (2 sigma_b)^-2).
    Both releases together are thus a single Gaussian mechanism with noise multiplier
    (z_delta^-2 + (2 sigma_b)^-2)^(-1/2) (:func:`combined_noise_multiplier`), which equals z for
    the z_delta above. It exists only if 2 sigma_b > z; z_delta grows without bound as
    2 sigma_b comes down to z.
    """
    if not (math.isfinite(noise_multiplier) and noise_multiplier >= 0):
        raise AggregationError("noise_multiplier must be >= 0.", code="invalid_privacy")
    if noise_multiplier == 0:
        return 0.0  # no noise on the sum: no privacy, whatever the count's noise
    if not (math.isfinite(count_stddev) and 2 * count_stddev > noise_multiplier):
        raise AggregationError(
            f"clip_count_stddev must exceed noise_multiplier / 2 = {noise_multiplier / 2:g} "
            "for adaptive clipping (Andrew et al. 2021, Theorem 1).",
            code="clip_count_stddev_too_small",
        )
    return float((noise_multiplier**-2 - (2 * count_stddev) ** -2) ** -0.5)


def combined_noise_multiplier(sum_multiplier: float, count_stddev: float) -> float:
    """The single Gaussian mechanism equivalent to noising the sum with ``sum_multiplier`` and
    the centred count (sensitivity 1/2) with ``count_stddev``: (z_delta^-2 + (2 sigma_b)^-2)^-1/2.
    """
    if sum_multiplier <= 0:
        return 0.0
    count_term = (2 * count_stddev) ** -2 if count_stddev > 0 else math.inf
    return float((sum_multiplier**-2 + count_term) ** -0.5)


def within_clip(
    norms: Sequence[float], clip_norm: float, reported: Sequence[bool | None] | None = None
) -> list[bool]:
    """b_k = 1 if update k's change was within the clip norm C, else 0.

    With client-side clipping a merchant clips before upload, so the server sees a norm <= C
    either way and takes the merchant's own flag (``reported``; None where none was sent). A
    flag is believed only for a change within C as the server sees it (up to float32 rounding):
    a larger change was not clipped by its merchant and counts as not within.
    """
    flags = []
    for k, norm in enumerate(norms):
        claim = None if reported is None else reported[k]
        seen = norm <= clip_norm * (1 + CLIENT_CLIP_TOLERANCE)
        flags.append(bool(seen and (norm <= clip_norm if claim is None else claim)))
    return flags


def noisy_fraction_within(
    within: int, count: int, *, count_stddev: float, rng: np.random.Generator
) -> float:
    """b = (sum_k b_k + N(0, sigma_b^2)) / K, clamped to [0, 1] (post-processing).

    ``within`` is sum_k b_k (a secure sum works as well as a count). Computed as the centred
    release (sum_k (b_k - 1/2) + N(0, sigma_b^2)) / K + 1/2, which is the same number.
    """
    if count < 1 or not 0 <= within <= count:
        raise AggregationError("The count of updates is out of range.", code="invalid_privacy")
    if not (math.isfinite(count_stddev) and count_stddev >= 0):
        raise AggregationError("clip_count_stddev must be >= 0.", code="invalid_privacy")
    centred = within - count / 2
    noise = float(rng.normal(0.0, count_stddev)) if count_stddev > 0 else 0.0
    return float(min(1.0, max(0.0, (centred + noise) / count + 0.5)))


def next_clip_norm(
    clip_norm: float, fraction_within: float, *, target_quantile: float, learning_rate: float
) -> float:
    """The geometric update C * exp(-eta_C * (b - gamma)), kept within ``CLIP_NORM_RANGE``.

    Too many updates within C (b > gamma) shrinks C, too few grows it; at the fixed point the
    fraction of norms within C is gamma, i.e. C is the gamma-quantile of the norms.
    """
    value = clip_norm * math.exp(-learning_rate * (fraction_within - target_quantile))
    low, high = CLIP_NORM_RANGE
    return float(min(high, max(low, value)))


def round_event(
    q: float, noise_multiplier: float, count_stddev: float | None = None, *, accountant: str = "rdp"
) -> Any:
    """The ``dp_accounting`` event of one round.

    A fixed-clip round is the (Poisson-sampled, unless q = 1) Gaussian mechanism with noise
    multiplier z. A round with adaptive clipping released two Gaussian queries on the same
    sampled merchants: the sum (noise multiplier z_delta) and the centred count (std sigma_b,
    sensitivity 1/2: noise multiplier 2 sigma_b). They share one sampling event, so the round is
    PoissonSampled(q, Composed([Gaussian(z_delta), Gaussian(2 sigma_b)])) -- not two separately
    sampled events. The RDP accountant takes this as it is (it reduces the composition to one
    Gaussian itself); the PLD accountant accepts only a single Gaussian under sampling, so it is
    given the equivalent Gaussian(:func:`combined_noise_multiplier`), which is exact, not a bound.
    """
    from dp_accounting import dp_event  # heavy: imported only when accounting

    inner: Any = dp_event.GaussianDpEvent(noise_multiplier)
    if count_stddev is not None:
        if accountant == "pld":
            combined = combined_noise_multiplier(noise_multiplier, count_stddev)
            inner = dp_event.GaussianDpEvent(combined)
        else:
            count_event = dp_event.GaussianDpEvent(2 * count_stddev)
            inner = dp_event.ComposedDpEvent([inner, count_event])
    return inner if q >= 1.0 else dp_event.PoissonSampledDpEvent(q, inner)


def epsilon(rounds: Sequence[RoundEvent], *, delta: float, accountant: str = "rdp") -> float:
    """epsilon spent after ``rounds`` (see ``RoundEvent``) at this delta."""
    from dp_accounting import pld, rdp  # heavy: imported only when accounting

    if accountant not in ACCOUNTANTS:
        raise AggregationError(f"accountant must be one of {ACCOUNTANTS}.", code="invalid_privacy")
    if not rounds:
        return 0.0
    tracker = rdp.RdpAccountant() if accountant == "rdp" else pld.PLDAccountant()
    keys = Counter((r[0], r[1], r[2] if len(r) > 2 else None) for r in rounds)
    for (q, sigma, count_stddev), count in keys.items():  # composition is order-free: batch it
        if sigma <= 0:
            return float("inf")  # no noise: no privacy
        tracker.compose(round_event(q, sigma, count_stddev, accountant=accountant), count)
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
