"""Central differential privacy: the accountant, clipping, noise, the budget, the ledger."""

from __future__ import annotations

import json

import numpy as np
import pytest

from flportal.errors import ValidationFailed
from rounds import services
from rounds.aggregation.dp import dp_fedavg, epsilon, noise_for_budget
from rounds.models import Round
from tests.factories import MerchantFactory, make_fl_model, submit_update

DP = {"clip_norm": 1.0, "noise_multiplier": 1.0, "delta": 1e-5, "epsilon_budget": 8.0}


def test_the_accountant_matches_the_reference_values():
    rounds = [(0.1, 1.0)] * 100  # Poisson sampling q=0.1, sigma=1, 100 rounds
    assert epsilon(rounds, delta=1e-5, accountant="rdp") == pytest.approx(7.90, abs=0.01)
    assert epsilon(rounds, delta=1e-5, accountant="pld") == pytest.approx(7.05, abs=0.01)


def test_the_noise_found_for_a_budget_keeps_within_it():
    sigma = noise_for_budget(epsilon_budget=8.0, rounds=20, q=1.0, delta=1e-5)
    assert epsilon([(1.0, sigma)] * 20, delta=1e-5) <= 8.0
    assert epsilon([(1.0, sigma * 0.95)] * 20, delta=1e-5) > 8.0


def test_one_merchant_moves_the_noiseless_aggregate_by_at_most_the_clip_norm():
    current = {"w": np.zeros(50, np.float32)}
    honest = [{"w": np.full(50, 0.01, np.float32)} for _ in range(4)]
    attacker = {"w": np.full(50, 1e6, np.float32)}
    rng = np.random.default_rng(0)
    without, _ = dp_fedavg(honest, current=current, clip_norm=1.0, noise_multiplier=0, rng=rng)
    with_attacker, info = dp_fedavg(
        [*honest, attacker], current=current, clip_norm=1.0, noise_multiplier=0, rng=rng
    )
    moved = np.linalg.norm(with_attacker["w"] * 5 - without["w"] * 4)  # the sums differ by one
    assert moved <= 1.0 + 1e-4
    assert info["clipped"] == 1


def test_the_noise_on_the_average_has_standard_deviation_sigma_c_over_k():
    current = {"w": np.zeros(200_000, np.float32)}
    updates = [{"w": np.zeros(200_000, np.float32)} for _ in range(4)]
    result, info = dp_fedavg(
        updates, current=current, clip_norm=2.0, noise_multiplier=1.5, rng=np.random.default_rng(42)
    )
    assert info["noise_std"] == pytest.approx(1.5 * 2.0 / 4)
    assert np.std(result["w"]) == pytest.approx(0.75, rel=0.01)
    assert abs(np.mean(result["w"])) < 0.01


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("privacy", "strategy", "code"),
    [
        ({**DP, "delta": 0.5}, "fedavg", "invalid_privacy"),
        ({**DP, "clip_norm": -1}, "fedavg", "invalid_privacy"),
        ({**DP, "accountant": "moments"}, "fedavg", "invalid_privacy"),
        ({"noise_multiplier": 1.0}, "fedavg", "invalid_privacy"),
        (DP, "median", "dp_needs_fedavg"),
    ],
)
def test_invalid_privacy_settings_are_refused(privacy, strategy, code):
    with pytest.raises(ValidationFailed) as caught:
        make_fl_model(slug="dp", strategy=strategy, privacy=privacy)
    assert caught.value.code == code


@pytest.mark.django_db
def test_a_round_that_would_exceed_the_budget_is_refused_before_it_opens(operator_client):
    MerchantFactory.create_batch(2)
    sigma = 1.0
    one_round = epsilon([(1.0, sigma)], delta=1e-5)
    make_fl_model(
        slug="dp", privacy={**DP, "noise_multiplier": sigma, "epsilon_budget": one_round * 1.1}
    )
    create = {"model": "dp", "min_updates": 2}
    first = operator_client.post(
        "/api/v1/operator/rounds", data=json.dumps(create), content_type="application/json"
    )
    assert first.status_code == 201, first.content
    second = operator_client.post(
        "/api/v1/operator/rounds", data=json.dumps(create), content_type="application/json"
    )
    assert second.status_code == 409
    assert second.json()["error"] == "privacy_budget_exhausted"
    assert Round.objects.count() == 1


@pytest.mark.django_db
def test_a_dp_round_adds_noise_records_the_ledger_and_reports_the_budget(
    operator_client, aggregate_calls
):
    merchants = MerchantFactory.create_batch(3)
    fl_model = make_fl_model(slug="dp", privacy=DP)
    fl_round = services.round_create(fl_model=fl_model, min_updates=3)
    assert fl_round.privacy["q"] == 1.0
    for merchant in merchants:
        submit_update(fl_round, merchant)
    services.round_aggregate(round_id=fl_round.pk)
    fl_round.refresh_from_db()
    assert fl_round.status == "completed"
    info = fl_round.result_version.aggregation
    assert info["noise_std"] == pytest.approx(1.0 * 1.0 / 3)
    report = operator_client.get("/api/v1/operator/models/dp/privacy").json()
    assert report["enabled"] is True
    assert report["epsilon_spent"] == pytest.approx(epsilon([(1.0, 1.0)], delta=1e-5))
    assert report["epsilon_remaining"] == pytest.approx(8.0 - report["epsilon_spent"])
    assert [e["round"] for e in report["ledger"]] == [1]


@pytest.mark.django_db
def test_a_scheduled_round_over_budget_fails_with_a_reason_instead_of_opening(aggregate_calls):
    MerchantFactory.create_batch(2)
    fl_model = make_fl_model(slug="dp", privacy=DP)
    first = services.round_create(fl_model=fl_model, min_updates=2)
    second = services.round_create(fl_model=fl_model, min_updates=2)
    fl_model.privacy = {
        **DP,
        "accountant": "rdp",
        "epsilon_budget": epsilon([(1.0, 1.0)], delta=1e-5) * 0.5,
    }
    fl_model.save(update_fields=["privacy"])  # the operator lowered the budget meanwhile
    services.round_cancel(fl_round=first)
    services.round_open(fl_round=second)
    second.refresh_from_db()
    assert second.status == "failed"
    assert "budget" in second.failure_reason and second.opened_at is None


@pytest.mark.django_db
def test_a_round_inviting_a_random_fraction_is_accounted_at_that_sampling_rate():
    MerchantFactory.create_batch(8)
    fl_model = make_fl_model(slug="sampled", privacy=DP)
    fl_round = services.round_create(fl_model=fl_model, min_updates=2, selection={"fraction": 0.25})
    assert fl_round.participants.count() == 2
    assert fl_round.privacy["q"] == 0.25 and fl_round.privacy["eligible"] == 8
    expected = epsilon([(0.25, DP["noise_multiplier"])], delta=DP["delta"])
    assert fl_round.privacy["epsilon_after"] == pytest.approx(expected)
    assert expected < epsilon([(1.0, DP["noise_multiplier"])], delta=DP["delta"])
