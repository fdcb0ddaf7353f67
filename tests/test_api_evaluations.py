"""Federated evaluation: merchants report how a new version does on their own held-out data."""

from __future__ import annotations

import json

import pytest
from django.test import Client

from rounds import services
from rounds.models import Evaluation
from tests.factories import MerchantFactory, make_open_round, submit_update, token_for

pytestmark = pytest.mark.django_db


def as_merchant(merchant) -> Client:
    return Client(HTTP_AUTHORIZATION=f"Bearer {token_for(merchant)}")


@pytest.fixture
def completed(aggregate_calls):
    """A completed round with two contributors and one invited merchant who sent nothing."""
    a, b, idle = MerchantFactory(), MerchantFactory(), MerchantFactory()
    fl_round = make_open_round(min_updates=2)
    submit_update(fl_round, a, num_examples=10)
    submit_update(fl_round, b, num_examples=30)
    services.round_aggregate(round_id=fl_round.pk)
    fl_round.refresh_from_db()
    return fl_round, a, b, idle


def put(client: Client, fl_round, body, number=None):
    version = number or fl_round.result_version.number
    return client.put(
        f"/api/v1/models/{fl_round.fl_model.slug}/versions/{version}/evaluation",
        data=json.dumps(body),
        content_type="application/json",
    )


def test_a_contributor_sees_the_new_version_as_pending_until_it_reports(completed):
    fl_round, a, _, _ = completed
    client = as_merchant(a)
    pending = client.get("/api/v1/evaluations/pending").json()["results"]
    assert [(p["model"], p["version"]) for p in pending] == [
        (fl_round.fl_model.slug, fl_round.result_version.number)
    ]
    assert put(client, fl_round, {"num_examples": 5, "metrics": {"auc": 0.7}}).status_code == 201
    assert client.get("/api/v1/evaluations/pending").json()["results"] == []


def test_an_identical_retry_is_accepted_once_and_a_different_one_conflicts(completed):
    fl_round, a, _, _ = completed
    client = as_merchant(a)
    body = {"num_examples": 5, "metrics": {"auc": 0.7}}
    assert put(client, fl_round, body).status_code == 201
    assert put(client, fl_round, body).status_code == 200
    changed = put(client, fl_round, {"num_examples": 5, "metrics": {"auc": 0.9}})
    assert changed.status_code == 409 and changed.json()["error"] == "evaluation_already_submitted"
    assert Evaluation.objects.count() == 1


def test_an_invited_merchant_who_sent_no_update_cannot_evaluate(completed):
    fl_round, _, _, idle = completed
    response = put(as_merchant(idle), fl_round, {"num_examples": 5, "metrics": {}})
    assert response.status_code == 409 and response.json()["error"] == "not_a_contributor"
    assert as_merchant(idle).get("/api/v1/evaluations/pending").json()["results"] == []


def test_a_merchant_never_invited_gets_not_found(completed):
    fl_round, *_ = completed
    response = put(as_merchant(MerchantFactory()), fl_round, {"num_examples": 5, "metrics": {}})
    assert response.status_code == 404 and response.json()["error"] == "version_not_found"


@pytest.mark.parametrize(
    ("body", "code"),
    [
        ({"num_examples": 0, "metrics": {}}, "min_value"),
        ({"num_examples": 5, "metrics": {"auc": "high"}}, "invalid_metrics"),
        ({"num_examples": 5, "metrics": {"bad name": 1}}, "invalid_metrics"),
        ({"num_examples": 5, "metrics": {}, "train_data": [[1, 2]]}, "training_data_refused"),
    ],
)
def test_invalid_evaluations_are_refused_and_nothing_is_stored(completed, body, code):
    fl_round, a, _, _ = completed
    response = put(as_merchant(a), fl_round, body)
    assert response.status_code == 400 and response.json()["error"] == code
    assert not Evaluation.objects.exists()


def test_no_token_revoked_token_and_wrong_method(completed):
    fl_round, a, _, _ = completed
    assert put(Client(), fl_round, {"num_examples": 1, "metrics": {}}).status_code == 401
    client = as_merchant(a)
    for token in a.tokens.all():
        services_revoke(token)
    revoked = put(client, fl_round, {"num_examples": 1, "metrics": {}})
    assert revoked.status_code == 401 and revoked.json()["error"] == "token_revoked"
    url = f"/api/v1/models/{fl_round.fl_model.slug}/versions/2/evaluation"
    assert as_merchant(a).post(url).status_code == 405


def services_revoke(token) -> None:
    from clients import services as client_services

    client_services.token_revoke(token=token)


def test_the_operator_sees_the_example_weighted_evaluation_per_version(completed, operator_client):
    fl_round, a, b, _ = completed
    put(as_merchant(a), fl_round, {"num_examples": 10, "metrics": {"auc": 0.6, "loss": 1.0}})
    put(as_merchant(b), fl_round, {"num_examples": 30, "metrics": {"auc": 0.8}})
    summary = operator_client.get(
        f"/api/v1/operator/models/{fl_round.fl_model.slug}/evaluations"
    ).json()
    assert len(summary) == 1
    row = summary[0]
    assert row["version"] == fl_round.result_version.number and row["evaluators"] == 2
    assert row["metrics"] == {"auc": pytest.approx(0.75)}  # only metrics everyone reported
    assert row["merchants"][a.slug] == {"num_examples": 10, "auc": 0.6, "loss": 1.0}
