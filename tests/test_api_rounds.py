"""GET /api/v1/rounds and GET /api/v1/rounds/<id>: the rounds a merchant is invited to."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.test import Client
from django.utils import timezone

from clients import services as client_services
from clients.models import ApiToken, Merchant
from rounds import services
from tests.factories import (
    SMALL_TENSORS,
    MerchantFactory,
    make_fl_model,
    make_open_round,
    submit_update,
    token_for,
)

pytestmark = pytest.mark.django_db

LIST = "/api/v1/rounds"


def _detail(fl_round) -> str:
    return f"/api/v1/rounds/{fl_round.pk}"


def _error(response, status: int) -> str:
    assert response.status_code == status, response.content
    body = response.json()
    assert set(body) == {"error", "detail"}
    return body["error"]


def _bearer(token: str) -> Client:
    return Client(HTTP_AUTHORIZATION=f"Bearer {token}")


@pytest.fixture
def fl_round(merchant):
    """An open round of a model with training hints; ``merchant`` and one other are invited."""
    MerchantFactory()
    fl_model = make_fl_model(training_hints={"epochs": 3, "learning_rate": 0.05})
    return make_open_round(fl_model=fl_model, min_updates=2)


# --- happy path -----------------------------------------------------------------------------


def test_the_list_shows_an_open_round_with_what_a_merchant_needs_to_train(
    merchant_client, fl_round
):
    response = merchant_client.get(LIST)

    assert response.status_code == 200
    [item] = response.json()["results"]
    version = fl_round.base_version
    assert item["id"] == fl_round.pk
    assert item["number"] == 1
    assert item["model"] == fl_round.fl_model.slug
    assert item["status"] == "open"
    assert item["deadline_at"] is not None
    assert item["training_hints"] == {"epochs": 3, "learning_rate": 0.05}
    assert item["tensors"] == SMALL_TENSORS
    assert item["base_version"]["number"] == 1
    assert item["base_version"]["sha256"] == version.sha256
    assert item["base_version"]["size_bytes"] == version.size_bytes
    assert item["base_version"]["weights_url"] == (
        f"/api/v1/models/{fl_round.fl_model.slug}/versions/1/weights"
    )
    assert item["my_update"] is None
    # how the version was aggregated (e.g. which merchants Krum kept) is for operators only
    assert "aggregation" not in item["base_version"] and "metrics" not in item["base_version"]


def test_the_list_shows_my_update_once_i_have_sent_it(merchant, merchant_client, fl_round):
    submit_update(fl_round, merchant, num_examples=25, metrics={"loss": 0.3})

    [item] = merchant_client.get(LIST).json()["results"]

    assert item["my_update"]["round"] == fl_round.pk
    assert item["my_update"]["merchant"] == merchant.slug
    assert item["my_update"]["num_examples"] == 25
    assert item["my_update"]["metrics"] == {"loss": 0.3}
    assert item["my_update"]["status"] == "accepted"


def test_the_list_does_not_show_another_merchants_update(merchant, merchant_client, fl_round):
    submit_update(fl_round, fl_round.participants.exclude(pk=merchant.pk).get())

    [item] = merchant_client.get(LIST).json()["results"]

    assert item["my_update"] is None


def test_the_list_shows_only_open_rounds_i_am_invited_to(merchant, merchant_client, fl_round):
    # a round I was invited to that is over
    ended = make_open_round(min_updates=1)
    services.round_cancel(fl_round=ended)
    # a round scheduled for later: nobody is invited yet
    services.round_create(
        fl_model=make_fl_model(), min_updates=1, opens_at=timezone.now() + timedelta(hours=1)
    )
    # a round opened while I was suspended
    client_services.merchant_set_status(merchant=merchant, status="suspended")
    not_invited = make_open_round(min_updates=1)
    client_services.merchant_set_status(merchant=merchant, status="active")
    assert not not_invited.participants.filter(pk=merchant.pk).exists()

    results = merchant_client.get(LIST).json()["results"]

    assert [r["id"] for r in results] == [fl_round.pk]


def test_the_list_is_empty_without_open_rounds(merchant_client):
    response = merchant_client.get(LIST)

    assert response.status_code == 200
    assert response.json() == {"results": []}


def test_the_detail_shows_one_round_and_my_update(merchant, merchant_client, fl_round):
    before = merchant_client.get(_detail(fl_round))
    submit_update(fl_round, merchant)
    after = merchant_client.get(_detail(fl_round))

    assert before.status_code == after.status_code == 200
    assert before.json()["id"] == fl_round.pk
    assert before.json()["base_version"]["number"] == 1
    assert before.json()["my_update"] is None
    assert after.json()["my_update"]["merchant"] == merchant.slug


def test_the_detail_of_a_round_that_ended_is_still_readable(merchant_client, fl_round):
    services.round_cancel(fl_round=fl_round)

    response = merchant_client.get(_detail(fl_round))

    assert response.status_code == 200
    assert response.json()["status"] == "cancelled"


def test_reading_twice_gives_the_same_answer(merchant_client, fl_round):
    assert merchant_client.get(LIST).json() == merchant_client.get(LIST).json()
    assert merchant_client.get(_detail(fl_round)).json() == (
        merchant_client.get(_detail(fl_round)).json()
    )


# --- authentication and permissions -----------------------------------------------------------


@pytest.mark.parametrize("path", ["list", "detail"])
def test_without_a_token_the_answer_is_401(fl_round, path):
    url = LIST if path == "list" else _detail(fl_round)

    response = Client().get(url)

    assert _error(response, 401) == "not_authenticated"
    assert response["WWW-Authenticate"] == "Bearer"


@pytest.mark.parametrize("path", ["list", "detail"])
def test_a_revoked_token_is_refused(merchant, fl_round, path):
    token, plaintext = client_services.token_issue(merchant=merchant)
    client_services.token_revoke(token=token)
    url = LIST if path == "list" else _detail(fl_round)

    assert _error(_bearer(plaintext).get(url), 401) == "token_revoked"


def test_an_expired_token_is_refused(merchant, fl_round):
    token, plaintext = client_services.token_issue(
        merchant=merchant, expires_at=timezone.now() + timedelta(hours=1)
    )
    ApiToken.objects.filter(pk=token.pk).update(expires_at=timezone.now() - timedelta(seconds=1))

    assert _error(_bearer(plaintext).get(LIST), 401) == "token_expired"


@pytest.mark.parametrize(
    "header",
    ["Bearer flp_abcdefgh_" + "a" * 43, "Bearer not-a-token", "Bearer a b", "Bearer"],
)
def test_an_invalid_token_is_refused(fl_round, header):
    response = Client(HTTP_AUTHORIZATION=header).get(LIST)

    assert _error(response, 401) == "invalid_token"


def test_an_operator_session_is_not_a_merchant(operator_client, fl_round):
    assert _error(operator_client.get(LIST), 401) == "not_authenticated"


@pytest.mark.parametrize("status", ["suspended", "pending"])
@pytest.mark.parametrize("path", ["list", "detail"])
def test_an_inactive_merchant_is_refused(merchant, merchant_client, fl_round, status, path):
    Merchant.objects.filter(pk=merchant.pk).update(status=status)
    url = LIST if path == "list" else _detail(fl_round)

    assert _error(merchant_client.get(url), 403) == "merchant_inactive"


def test_a_round_i_was_not_invited_to_is_not_found(fl_round):
    newcomer = MerchantFactory()  # became active after the round opened

    response = _bearer(token_for(newcomer)).get(_detail(fl_round))

    assert _error(response, 404) == "round_not_found"


def test_an_unknown_round_is_not_found(merchant_client, fl_round):
    assert _error(merchant_client.get(f"/api/v1/rounds/{fl_round.pk + 999}"), 404) == (
        "round_not_found"
    )


@pytest.mark.parametrize("method", ["post", "put", "patch", "delete"])
@pytest.mark.parametrize("path", ["list", "detail"])
def test_other_methods_are_not_allowed(merchant_client, fl_round, method, path):
    url = LIST if path == "list" else _detail(fl_round)

    response = getattr(merchant_client, method)(url)

    assert _error(response, 405) == "method_not_allowed"


def test_me_shows_the_calling_merchant(merchant, merchant_client):
    response = merchant_client.get("/api/v1/me")

    assert response.status_code == 200
    assert response.json()["slug"] == merchant.slug
    assert response.json()["status"] == "active"
