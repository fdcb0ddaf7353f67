"""Choosing the aggregation strategy per model: operator API, quorum checks, what clients see,
what the round page shows."""

from __future__ import annotations

import json

import pytest

from rounds.aggregation import STRATEGIES
from rounds.models import Event, FederatedModel
from tests.factories import MerchantFactory, make_fl_model, token_for

pytestmark = pytest.mark.django_db

API = "/api/v1/operator"


def patch(client, slug: str, payload):
    return client.patch(
        f"{API}/models/{slug}", data=json.dumps(payload), content_type="application/json"
    )


def error(response, status: int) -> str:
    assert response.status_code == status, response.content
    assert set(response.json()) == {"error", "detail"}
    return response.json()["error"]


def test_the_catalogue_lists_every_strategy_with_its_parameters(operator_client):
    response = operator_client.get(f"{API}/strategies")
    assert response.status_code == 200
    catalogue = {item["name"]: item for item in response.json()}
    assert set(catalogue) == set(STRATEGIES)
    trimmed = {p["name"]: p for p in catalogue["trimmed_mean"]["params"]}
    assert trimmed["beta"]["default"] == 0.1 and "clip_norm" in trimmed
    assert catalogue["krum"]["parallel"] is False and catalogue["median"]["parallel"] is True


def test_a_model_is_created_with_a_strategy_and_its_defaults(operator_client):
    payload = {
        "name": "robust",
        "tensors": [{"name": "w", "shape": [3], "dtype": "float32"}],
        "strategy": "fedadam",
        "strategy_params": {"eta": 0.05},
    }
    response = operator_client.post(
        f"{API}/models", data=json.dumps(payload), content_type="application/json"
    )
    assert response.status_code == 201, response.content
    body = response.json()
    assert body["strategy"] == "fedadam"
    assert body["strategy_params"] == {"eta": 0.05, "beta1": 0.9, "beta2": 0.99, "tau": 0.001}


def test_an_operator_switches_the_strategy_and_it_is_audited(operator_client):
    fl_model = make_fl_model(slug="m")
    response = patch(
        operator_client,
        "m",
        {"strategy": "trimmed_mean", "strategy_params": {"beta": 0.2, "clip_norm": 5}},
    )
    assert response.status_code == 200, response.content
    fl_model.refresh_from_db()
    assert fl_model.strategy == "trimmed_mean"
    assert fl_model.strategy_params == {"beta": 0.2, "clip_norm": 5.0}
    assert Event.objects.filter(kind="model.updated").exists()


@pytest.mark.parametrize(
    ("payload", "code"),
    [
        ({"strategy": "fedsgd"}, "unknown_strategy"),
        ({"strategy": "trimmed_mean", "strategy_params": {"beta": 0.5}}, "invalid_strategy_params"),
        ({"strategy": "krum", "strategy_params": {"f": 1.5}}, "invalid_strategy_params"),
        ({"strategy": "fedavg", "strategy_params": {"momentum": 0.9}}, "invalid_strategy_params"),
        ({"strategy_params": {"clip_norm": -1}}, "invalid_strategy_params"),
        ({"training_hints": {"epoch": 2}}, "invalid_hints"),
    ],
)
def test_invalid_strategy_settings_are_refused_and_nothing_changes(operator_client, payload, code):
    fl_model = make_fl_model(slug="m")
    assert error(patch(operator_client, "m", payload), 400) == code
    fl_model.refresh_from_db()
    assert (fl_model.strategy, fl_model.strategy_params) == ("fedavg", {})


def test_a_krum_round_needs_a_quorum_krum_can_work_with(operator_client):
    MerchantFactory.create_batch(3)
    make_fl_model(slug="k", strategy="krum", strategy_params={"f": 2})
    response = operator_client.post(
        f"{API}/rounds",
        data=json.dumps({"model": "k", "min_updates": 5}),
        content_type="application/json",
    )
    assert error(response, 400) == "quorum_too_small"
    assert "7" in response.json()["detail"]


def test_a_running_round_keeps_the_strategy_it_opened_with(operator_client):
    MerchantFactory.create_batch(2)
    make_fl_model(slug="m")
    created = operator_client.post(
        f"{API}/rounds",
        data=json.dumps({"model": "m", "min_updates": 2}),
        content_type="application/json",
    )
    round_id = created.json()[0]["id"]
    patch(operator_client, "m", {"strategy": "median"})
    detail = operator_client.get(f"{API}/rounds/{round_id}").json()
    assert detail["strategy"] == "fedavg"
    assert FederatedModel.objects.get(slug="m").strategy == "median"


def test_fedprox_sends_its_mu_to_clients_as_the_proximal_hint(client):
    merchant = MerchantFactory()
    fl_model = make_fl_model(
        slug="prox", strategy="fedprox", strategy_params={"mu": 0.3}, training_hints={"epochs": 2}
    )
    from rounds import services

    services.round_create(fl_model=fl_model, min_updates=1)
    response = client.get("/api/v1/rounds", HTTP_AUTHORIZATION=f"Bearer {token_for(merchant)}")
    hints = response.json()["results"][0]["training_hints"]
    assert hints == {"epochs": 2, "proximal_mu": 0.3}


def test_the_round_page_shows_the_strategy(operator_client):
    MerchantFactory()
    fl_model = make_fl_model(slug="page", strategy="trimmed_mean", strategy_params={"beta": 0.2})
    from rounds import services

    fl_round = services.round_create(fl_model=fl_model, min_updates=1)
    page = operator_client.get(f"/rounds/{fl_round.pk}/").content.decode()
    assert "Trimmed mean" in page and "beta=0.2" in page


def test_the_admin_form_refuses_invalid_strategy_parameters(operator):
    from rounds.admin import FederatedModelForm

    fl_model = make_fl_model(slug="adm")
    form = FederatedModelForm(
        instance=fl_model,
        data={
            "name": "adm",
            "description": "",
            "strategy": "multi_krum",
            "strategy_params": json.dumps({"f": 1, "m": 0}),
            "training_hints": "{}",
        },
    )
    assert not form.is_valid()
    assert "invalid_strategy_params" in str(form.errors["strategy_params"])
