"""Adaptive clipping (Andrew et al. 2021) and client-side clipping: the geometric update, the
noise split of Theorem 1, the accountant, the clip norm carried from round to round, and the
dp_clip_norm hint that the SDK clips to."""

from __future__ import annotations

import math
from typing import Any

import httpx
import numpy as np
import pytest
from django.test import Client

from clients.sdk import FlportalClient, TrainResult
from clients.sdk.cli import participate
from clients.sdk.privacy import WITHIN_CLIP_METRIC, clip_to_round
from flportal.errors import ValidationFailed
from rounds import services
from rounds.aggregation import AggregationError, dp
from tests.factories import MerchantFactory, make_fl_model, small_weights, submit_update, token_for

ADAPTIVE = {
    "clip_norm": 1.0,
    "noise_multiplier": 1.0,
    "delta": 1e-5,
    "epsilon_budget": 50.0,
    "clipping": "adaptive",
    "clip_count_stddev": 1.0,
}


def simulate(
    *, gamma: float, count_stddev: float, rounds: int = 200, per_round: int = 100, seed: int = 7
) -> list[float]:
    """The clip norm over ``rounds`` rounds of ``per_round`` norms drawn from Exp(1)."""
    rng = np.random.default_rng(seed)
    clip_norm, history = 0.1, []
    for _ in range(rounds):
        norms = rng.exponential(1.0, size=per_round)
        within = sum(dp.within_clip(norms, clip_norm))
        fraction = dp.noisy_fraction_within(within, per_round, count_stddev=count_stddev, rng=rng)
        clip_norm = dp.next_clip_norm(clip_norm, fraction, target_quantile=gamma, learning_rate=0.2)
        history.append(clip_norm)
    return history


@pytest.mark.parametrize("count_stddev", [0.0, 5.0])  # no noise; the paper's K / 20
@pytest.mark.parametrize("gamma", [0.5, 0.9])
def test_the_geometric_update_converges_to_the_target_quantile(gamma, count_stddev):
    history = simulate(gamma=gamma, count_stddev=count_stddev)
    quantile = -math.log(1 - gamma)  # of Exp(1): 0.693 for the median, 2.303 for 0.9
    settled = float(np.mean(history[-100:]))
    assert settled == pytest.approx(quantile, rel=0.05)
    assert 1 - math.exp(-settled) == pytest.approx(gamma, abs=0.02)  # its true coverage
    assert abs(history[100] / quantile - 1) < 0.1  # from 0.1, 7 to 23 times too small


def test_one_step_moves_the_norm_by_exp_of_minus_eta_times_the_miss():
    current = {"w": np.zeros(2, np.float32)}
    updates = [{"w": np.array([n, 0.0], np.float32)} for n in (0.5, 1.0, 2.0, 3.0)]
    adaptive = dp.AdaptiveClipping(target_quantile=0.5, learning_rate=0.2, count_stddev=0.0)
    _, info = dp.dp_fedavg(
        updates,
        current=current,
        clip_norm=2.5,
        noise_multiplier=0.0,
        rng=np.random.default_rng(0),
        adaptive=adaptive,
    )
    assert info["unclipped_fraction"] == 0.75  # 3 of 4 within 2.5
    assert info["next_clip_norm"] == pytest.approx(2.5 * math.exp(-0.2 * 0.25))
    assert "clipped" not in info  # the exact count is never published next to the noisy one


def test_z_delta_follows_theorem_1_and_matches_dp_accountings_own_reduction():
    z, sigma_b = 1.0, 1.0
    z_delta = dp.delta_noise_multiplier(z, sigma_b)
    assert z_delta == pytest.approx((1 - 1 / 4) ** -0.5)  # 1.1547
    assert dp.combined_noise_multiplier(z_delta, sigma_b) == pytest.approx(z)
    assert dp.delta_noise_multiplier(1.0, 5.0) == pytest.approx(1.005, abs=1e-3)  # sigma_b = K/20
    with pytest.raises(AggregationError) as caught:
        dp.delta_noise_multiplier(1.0, 0.5)  # 2 sigma_b must exceed z
    assert caught.value.code == "clip_count_stddev_too_small"


@pytest.mark.parametrize("accountant", ["rdp", "pld"])
def test_an_adaptive_round_costs_what_a_fixed_round_with_z_costs(accountant):
    z, sigma_b = 1.0, 1.0
    z_delta = dp.delta_noise_multiplier(z, sigma_b)
    adaptive = dp.epsilon([(0.1, z_delta, sigma_b)] * 100, delta=1e-5, accountant=accountant)
    fixed = dp.epsilon([(0.1, z)] * 100, delta=1e-5, accountant=accountant)
    assert adaptive == pytest.approx(fixed, rel=1e-3)
    assert fixed == pytest.approx({"rdp": 7.90, "pld": 7.05}[accountant], abs=0.01)
    sum_alone = dp.epsilon([(0.1, z_delta)] * 100, delta=1e-5, accountant=accountant)
    assert sum_alone < adaptive * 0.9  # the count is not free: leaving it out understates epsilon


def test_the_sum_is_noised_with_z_delta_times_c_over_k():
    current = {"w": np.zeros(200_000, np.float32)}
    updates = [{"w": np.zeros(200_000, np.float32)} for _ in range(4)]
    adaptive = dp.AdaptiveClipping(target_quantile=0.5, learning_rate=0.2, count_stddev=1.0)
    result, info = dp.dp_fedavg(
        updates,
        current=current,
        clip_norm=2.0,
        noise_multiplier=1.0,
        rng=np.random.default_rng(42),
        adaptive=adaptive,
    )
    expected = (1 - 1 / 4) ** -0.5 * 2.0 / 4
    assert info["noise_std"] == pytest.approx(expected)
    assert np.std(result["w"]) == pytest.approx(expected, rel=0.01)


def test_a_client_clipped_update_counts_by_the_merchants_own_flag():
    # norms as the server sees them, after merchants clipped to C = 1
    norms = [0.4, 1.0 + 1e-7, 1.0, 3.0]
    assert dp.within_clip(norms, 1.0, [True, False, None, True]) == [True, False, True, False]


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("changes", "code"),
    [
        ({"clipping": "sometimes"}, "invalid_privacy"),
        ({"clip_mode": "merchant"}, "invalid_privacy"),
        ({"target_quantile": 1.0}, "invalid_privacy"),
        ({"target_quantile": 0}, "invalid_privacy"),
        ({"clip_learning_rate": -0.1}, "invalid_privacy"),
        ({"clip_count_stddev": 0.5}, "clip_count_stddev_too_small"),  # = z / 2
        ({"clip_count_stddev": None}, "clip_count_stddev_required"),
        ({"clipping": "fixed"}, "invalid_privacy"),  # adaptive settings with fixed clipping
    ],
)
def test_invalid_clipping_settings_are_refused(changes, code):
    privacy = {k: v for k, v in {**ADAPTIVE, **changes}.items() if v is not None}
    with pytest.raises(ValidationFailed) as caught:
        make_fl_model(slug="ac", privacy=privacy)
    assert caught.value.code == code


@pytest.mark.django_db
def test_the_api_refuses_a_too_small_count_noise_with_its_code(operator_client):
    body = {"name": "ac", "tensors": [{"name": "w", "shape": [2], "dtype": "float32"}]}
    response = operator_client.post(
        "/api/v1/operator/models",
        data={**body, "privacy": {**ADAPTIVE, "clip_count_stddev": 0.4}},
        content_type="application/json",
    )
    assert response.status_code == 400
    assert response.json()["error"] == "clip_count_stddev_too_small"


@pytest.mark.django_db
def test_defaults_are_filled_in_and_fixed_clipping_stays_the_default():
    fl_model = make_fl_model(slug="ac", privacy=ADAPTIVE)
    assert fl_model.privacy["target_quantile"] == 0.5
    assert fl_model.privacy["clip_learning_rate"] == 0.2
    assert fl_model.privacy["clip_mode"] == "server"
    fixed = make_fl_model(slug="fx", privacy={k: ADAPTIVE[k] for k in list(ADAPTIVE)[:4]})
    assert (fixed.privacy["clipping"], fixed.privacy["clip_mode"]) == ("fixed", "server")


@pytest.mark.django_db
def test_the_clip_norm_is_carried_from_round_to_round_and_reported(
    operator_client, aggregate_calls
):
    merchants = MerchantFactory.create_batch(4)
    fl_model = make_fl_model(slug="ac", privacy=ADAPTIVE)
    in_force = []
    for number in range(1, 4):
        fl_round = services.round_create(fl_model=fl_model, min_updates=4)
        assert fl_round.number == number and fl_round.status == "open"
        in_force.append(fl_round.privacy["clip_norm"])
        for k, merchant in enumerate(merchants):  # changes of norm 0.5, 1, 1.5, 2 (x2 tensors)
            submit_update(fl_round, merchant, small_weights(0.25 * (k + 1) / math.sqrt(5) * 2))
        services.round_aggregate(round_id=fl_round.pk)
        fl_round.refresh_from_db()
        info = fl_round.result_version.aggregation
        assert info["clipping"] == "adaptive" and info["clip_norm"] == in_force[-1]
        assert 0.0 <= info["unclipped_fraction"] <= 1.0
        assert info["next_clip_norm"] == pytest.approx(
            in_force[-1] * math.exp(-0.2 * (info["unclipped_fraction"] - 0.5))
        )
    assert in_force[0] == 1.0
    versions = fl_model.versions.order_by("number")
    nexts = [v.aggregation["next_clip_norm"] for v in versions if v.aggregation]
    assert in_force[1:] == nexts[:2]  # each round clips at the norm the previous one produced

    report = operator_client.get("/api/v1/operator/models/ac/privacy").json()
    assert report["clipping"] == "adaptive" and report["clip_mode"] == "server"
    assert report["current_clip_norm"] == pytest.approx(nexts[2])
    assert [e["clip_norm"] for e in report["ledger"]] == pytest.approx(in_force)
    assert [e["next_clip_norm"] for e in report["ledger"]] == pytest.approx(nexts)
    z_delta = dp.delta_noise_multiplier(1.0, 1.0)
    assert report["delta_noise_multiplier"] == pytest.approx(z_delta)
    assert all(e["delta_noise_multiplier"] == pytest.approx(z_delta) for e in report["ledger"])
    spent = dp.epsilon([(1.0, z_delta, 1.0)] * 3, delta=1e-5)
    assert report["epsilon_spent"] == pytest.approx(spent)
    assert spent == pytest.approx(dp.epsilon([(1.0, 1.0)] * 3, delta=1e-5), rel=1e-6)
    assert report["ledger"][-1]["epsilon_after"] == pytest.approx(spent)


@pytest.mark.django_db
def test_a_new_clip_norm_from_the_operator_restarts_the_adaptation(aggregate_calls):
    merchants = MerchantFactory.create_batch(2)
    fl_model = make_fl_model(slug="ac", privacy=ADAPTIVE)
    first = services.round_create(fl_model=fl_model, min_updates=2)
    for merchant in merchants:
        submit_update(first, merchant)
    services.round_aggregate(round_id=first.pk)
    services.fl_model_update(fl_model=fl_model, privacy={**ADAPTIVE, "clip_norm": 3.0})
    second = services.round_create(fl_model=fl_model, min_updates=2)
    assert second.privacy["clip_norm"] == 3.0


def django_transport(client: Client) -> httpx.MockTransport:
    """Serve the SDK's HTTP requests with the Django test client: the real API, no sockets."""

    def handler(request: httpx.Request) -> httpx.Response:
        headers = {
            k: v
            for k, v in request.headers.items()
            if k.lower() not in {"host", "content-length", "content-type"}
        }
        response = client.generic(
            request.method,
            request.url.raw_path.decode(),
            data=request.content,
            content_type=request.headers.get("content-type", "application/octet-stream"),
            headers=headers,
        )
        body = b"".join(response.streaming_content) if response.streaming else response.content
        return httpx.Response(response.status_code, headers=dict(response.items()), content=body)

    return httpx.MockTransport(handler)


@pytest.mark.django_db
def test_in_client_mode_the_hint_reaches_the_sdk_which_clips_before_upload(aggregate_calls):
    merchants = MerchantFactory.create_batch(2)
    fl_model = make_fl_model(slug="ac", privacy={**ADAPTIVE, "clip_mode": "client"})
    fl_round = services.round_create(fl_model=fl_model, min_updates=2)
    assert services.round_training_hints(fl_round)["dp_clip_norm"] == 1.0

    def trainer_moving_by(step: float) -> Any:
        def trainer(weights: dict[str, np.ndarray], hints: dict[str, Any]) -> TrainResult:
            return TrainResult({k: v + step for k, v in weights.items()}, 10, {"loss": 0.1})

        return trainer

    for merchant, step in zip(merchants, (3.0, 0.1), strict=True):  # norms 6.7 and 0.22
        transport = django_transport(Client())
        with FlportalClient(
            "http://testserver", token_for(merchant), transport=transport
        ) as client:
            (info,) = client.rounds()
            assert info.training_hints["dp_clip_norm"] == 1.0
            participate(client, trainer_moving_by(step), info)
    updates = {u.merchant_id: u for u in fl_round.updates.all()}
    assert updates[merchants[0].pk].metrics[WITHIN_CLIP_METRIC] == 0.0
    assert updates[merchants[1].pk].metrics[WITHIN_CLIP_METRIC] == 1.0
    services.round_aggregate(round_id=fl_round.pk)
    fl_round.refresh_from_db()
    version = fl_round.result_version
    assert version.aggregation["clip_mode"] == "client"
    assert WITHIN_CLIP_METRIC not in version.metrics and "loss" in version.metrics


def test_the_sdk_clips_to_the_hint_and_leaves_rounds_without_one_alone():
    base = {"w": np.zeros(3, np.float32), "b": np.zeros(1, np.float32)}
    big = TrainResult({"w": np.full(3, 2.0, np.float32), "b": np.ones(1, np.float32)}, 5, {})
    clipped = clip_to_round(big, base, {"dp_clip_norm": 0.5, "epochs": 1})
    norm = math.sqrt(
        sum(float(np.sum(v.astype(np.float64) ** 2)) for v in clipped.weights.values())
    )
    assert norm == pytest.approx(0.5, rel=1e-6)
    assert clipped.metrics == {WITHIN_CLIP_METRIC: 0.0} and clipped.weights["w"].dtype == np.float32
    small = TrainResult({"w": np.full(3, 0.1, np.float32), "b": np.zeros(1, np.float32)}, 5, {})
    kept = clip_to_round(small, base, {"dp_clip_norm": 0.5})
    np.testing.assert_array_equal(kept.weights["w"], small.weights["w"])
    assert kept.metrics[WITHIN_CLIP_METRIC] == 1.0
    assert clip_to_round(big, base, {"epochs": 1}) is big
    with pytest.raises(ValueError):
        clip_to_round(big, base, {"dp_clip_norm": -1})
