"""The operator API under /api/v1/operator/: merchants, tokens, models, versions and rounds.

Staff session authentication with CSRF, like the browser pages."""

from __future__ import annotations

import hashlib
import json
import re
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest
from django.conf import settings
from django.contrib.auth import get_user_model
from django.test import Client
from django.utils import timezone

from clients.models import ApiToken, Merchant
from clients.sdk import codec
from rounds import artifacts, services
from rounds.models import Event, FederatedModel, ModelVersion, Round
from tests.factories import (
    SMALL_TENSORS,
    MerchantFactory,
    make_fl_model,
    make_open_round,
    small_weights,
    submit_update,
    token_for,
)

pytestmark = pytest.mark.django_db

API = "/api/v1/operator"
BINARY = "application/octet-stream"
TOKEN_FORMAT = re.compile(r"^flp_[a-z0-9]{8}_[A-Za-z0-9_-]{43}$")


def _error(response, status: int) -> str:
    assert response.status_code == status, response.content
    body = response.json()
    assert set(body) == {"error", "detail"}
    return body["error"]


def _post(client: Client, path: str, payload=None):
    return client.post(
        f"{API}/{path}", data=json.dumps(payload or {}), content_type="application/json"
    )


def _stored_files() -> list[Path]:
    root = Path(settings.MEDIA_ROOT)
    return sorted(p for p in root.rglob("*") if p.is_file())


# --- access -----------------------------------------------------------------------------------

ENDPOINTS = [
    ("get", "merchants"),
    ("post", "merchants"),
    ("get", "merchants/shop-x"),
    ("post", "merchants/shop-x/status"),
    ("get", "merchants/shop-x/tokens"),
    ("post", "merchants/shop-x/tokens"),
    ("post", "tokens/1/revoke"),
    ("get", "models"),
    ("post", "models"),
    ("get", "models/m"),
    ("get", "models/m/versions"),
    ("post", "models/m/versions"),
    ("get", "rounds"),
    ("post", "rounds"),
    ("get", "rounds/1"),
    ("post", "rounds/1/close"),
    ("post", "rounds/1/cancel"),
]


def _call(client: Client, method: str, path: str):
    if method == "get":
        return client.get(f"{API}/{path}")
    return _post(client, path, {"name": "x"})


@pytest.mark.parametrize(("method", "path"), ENDPOINTS)
def test_an_anonymous_caller_is_refused(method, path):
    assert _error(_call(Client(), method, path), 403) == "not_authenticated"


@pytest.mark.parametrize(("method", "path"), ENDPOINTS)
def test_a_merchant_token_does_not_open_the_operator_api(merchant_client, method, path):
    assert _error(_call(merchant_client, method, path), 403) == "not_authenticated"


@pytest.mark.parametrize(("method", "path"), ENDPOINTS)
def test_a_logged_in_user_who_is_not_staff_is_refused(method, path):
    client = Client()
    client.force_login(get_user_model().objects.create(username="visitor"))

    assert _error(_call(client, method, path), 403) == "not_an_operator"
    assert not Merchant.objects.exists()


def test_a_session_post_without_the_csrf_token_is_refused(operator):
    client = Client(enforce_csrf_checks=True)
    client.force_login(operator)

    response = _post(client, "merchants", {"name": "Corner Shop"})

    assert _error(response, 403) == "permission_denied"
    assert "CSRF" in response.json()["detail"]
    assert not Merchant.objects.exists()


def test_a_session_get_needs_no_csrf_token(operator):
    client = Client(enforce_csrf_checks=True)
    client.force_login(operator)

    assert client.get(f"{API}/merchants").status_code == 200


def test_training_data_anywhere_in_a_json_body_is_refused(operator_client):
    response = _post(operator_client, "merchants", {"name": "x", "train_data": [[1, 2]]})

    assert _error(response, 400) == "training_data_refused"
    assert not Merchant.objects.exists()


@pytest.mark.parametrize(
    "payload",
    [
        {"name": "x", "meta": {"Rows": [{"a": 1}]}},
        {"name": "x", "extra": [{"x": [1, 2]}]},
        {"name": "x", "customers": []},
    ],
)
def test_training_data_nested_in_a_json_body_is_refused(operator_client, payload):
    assert _error(_post(operator_client, "merchants", payload), 400) == "training_data_refused"
    assert not Merchant.objects.exists()


def test_training_data_in_a_model_definition_is_refused(operator_client):
    payload = {"name": "m", "tensors": SMALL_TENSORS, "train_data": [[0.1, 1]]}

    assert _error(_post(operator_client, "models", payload), 400) == "training_data_refused"
    assert not FederatedModel.objects.exists()


def test_malformed_json_is_refused(operator_client):
    response = operator_client.post(
        f"{API}/merchants", data="{not json", content_type="application/json"
    )

    assert _error(response, 400) == "parse_error"
    assert not Merchant.objects.exists()


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("put", "merchants"),
        ("delete", "merchants/shop-x"),
        ("get", "merchants/shop-x/status"),
        ("get", "tokens/1/revoke"),
        ("delete", "models/m"),
        ("put", "models/m/versions"),
        ("patch", "rounds/1"),
        ("get", "rounds/1/close"),
        ("get", "rounds/1/cancel"),
    ],
)
def test_other_methods_are_not_allowed(operator_client, method, path):
    response = getattr(operator_client, method)(f"{API}/{path}")

    assert _error(response, 405) == "method_not_allowed"


# --- merchants ------------------------------------------------------------------------------


def test_an_operator_creates_a_pending_merchant(operator, operator_client):
    response = _post(operator_client, "merchants", {"name": "Corner Shop", "region": "eu"})

    assert response.status_code == 201
    body = response.json()
    assert (body["name"], body["slug"], body["status"], body["region"]) == (
        "Corner Shop",
        "corner-shop",
        "pending",
        "eu",
    )
    event = Event.objects.get(kind="merchant.created")
    assert event.actor == operator


def test_creating_a_merchant_with_a_taken_slug_is_a_conflict(operator_client):
    MerchantFactory(slug="corner-shop")

    response = _post(operator_client, "merchants", {"name": "Corner Shop"})

    assert _error(response, 409) == "slug_taken"
    assert Merchant.objects.count() == 1


@pytest.mark.parametrize(
    ("payload", "code"),
    [
        ({}, "invalid_input"),
        ({"name": ""}, "invalid_input"),
        ({"name": "x", "slug": "not a slug"}, "invalid_input"),
        ({"name": "x", "contact_email": "nope"}, "invalid_input"),
        ({"name": "x", "status": "deleted"}, "invalid_status"),
        ({"name": "x", "size_band": "huge"}, "invalid_size_band"),
    ],
)
def test_creating_a_merchant_with_invalid_input_is_refused(operator_client, payload, code):
    assert _error(_post(operator_client, "merchants", payload), 400) == code
    assert not Merchant.objects.exists()


def test_the_merchant_list_and_detail_show_merchants(operator_client):
    shop = MerchantFactory(slug="shop-x")

    listed = operator_client.get(f"{API}/merchants")
    detail = operator_client.get(f"{API}/merchants/shop-x")

    assert [m["slug"] for m in listed.json()] == [shop.slug]
    assert detail.json()["id"] == shop.pk


def test_an_unknown_merchant_is_not_found(operator_client):
    assert _error(operator_client.get(f"{API}/merchants/nope"), 404) == "merchant_not_found"


def test_an_operator_approves_then_suspends_a_merchant(operator_client):
    MerchantFactory(slug="shop-x", status="pending")

    approved = _post(operator_client, "merchants/shop-x/status", {"status": "active"})
    again = _post(operator_client, "merchants/shop-x/status", {"status": "active"})
    suspended = _post(operator_client, "merchants/shop-x/status", {"status": "suspended"})

    assert approved.json()["status"] == again.json()["status"] == "active"
    assert suspended.json()["status"] == "suspended"
    assert Event.objects.filter(kind="merchant.status").count() == 2


def test_a_merchant_cannot_be_set_back_to_pending(operator_client):
    MerchantFactory(slug="shop-x", status="active")

    response = _post(operator_client, "merchants/shop-x/status", {"status": "pending"})

    assert _error(response, 409) == "invalid_transition"
    assert Merchant.objects.get().status == "active"


@pytest.mark.parametrize(
    ("payload", "code"), [({}, "invalid_input"), ({"status": "gone"}, "invalid_choice")]
)
def test_an_invalid_status_is_refused(operator_client, payload, code):
    MerchantFactory(slug="shop-x", status="active")

    assert _error(_post(operator_client, "merchants/shop-x/status", payload), 400) == code


# --- tokens ---------------------------------------------------------------------------------


def test_an_issued_token_is_shown_once_and_works(operator_client):
    MerchantFactory(slug="shop-x")

    response = _post(operator_client, "merchants/shop-x/tokens", {"label": "pos-1"})

    assert response.status_code == 201
    body = response.json()
    assert TOKEN_FORMAT.match(body["token"])
    assert body["label"] == "pos-1"
    assert body["merchant"] == "shop-x"
    assert body["revoked_at"] is None
    assert "hashed_key" not in body
    me = Client(HTTP_AUTHORIZATION=f"Bearer {body['token']}").get("/api/v1/me")
    assert me.json()["slug"] == "shop-x"


def test_the_token_list_never_shows_a_plaintext_or_its_hash(operator_client):
    MerchantFactory(slug="shop-x")
    plaintext = _post(operator_client, "merchants/shop-x/tokens").json()["token"]

    response = operator_client.get(f"{API}/merchants/shop-x/tokens")

    assert response.status_code == 200
    [listed] = response.json()
    assert "token" not in listed
    assert "hashed_key" not in listed
    assert plaintext not in response.content.decode()
    assert ApiToken.objects.get().hashed_key not in response.content.decode()
    assert listed["prefix"] == plaintext.split("_")[1]


def test_a_token_expiring_in_the_past_is_refused(operator_client):
    MerchantFactory(slug="shop-x")
    past = (timezone.now() - timedelta(minutes=1)).isoformat()

    response = _post(operator_client, "merchants/shop-x/tokens", {"expires_at": past})

    assert _error(response, 400) == "invalid_expiry"
    assert not ApiToken.objects.exists()


def test_tokens_of_an_unknown_merchant_are_not_found(operator_client):
    assert _error(_post(operator_client, "merchants/nope/tokens"), 404) == "merchant_not_found"
    assert not ApiToken.objects.exists()


def test_revoking_a_token_is_final_and_can_be_repeated(operator_client, merchant):
    plaintext = token_for(merchant)
    token = ApiToken.objects.get()

    first = _post(operator_client, f"tokens/{token.pk}/revoke")
    second = _post(operator_client, f"tokens/{token.pk}/revoke")

    assert first.status_code == second.status_code == 200
    assert first.json()["revoked_at"] is not None
    assert second.json()["revoked_at"] == first.json()["revoked_at"]
    me = Client(HTTP_AUTHORIZATION=f"Bearer {plaintext}").get("/api/v1/me")
    assert _error(me, 401) == "token_revoked"


def test_revoking_an_unknown_token_is_not_found(operator_client):
    assert _error(_post(operator_client, "tokens/999/revoke"), 404) == "token_not_found"


# --- models and versions --------------------------------------------------------------------


def test_an_operator_defines_a_model_with_its_first_version(operator_client):
    payload = {
        "name": "Churn",
        "tensors": list(reversed(SMALL_TENSORS)),
        "training_hints": {"epochs": 2, "learning_rate": 0.1},
        "init": "zeros",
    }

    response = _post(operator_client, "models", payload)

    assert response.status_code == 201
    body = response.json()
    assert body["slug"] == "churn"
    assert body["tensors"] == SMALL_TENSORS  # sorted by name
    assert body["training_hints"] == {"epochs": 2, "learning_rate": 0.1}
    assert body["latest_version"] == 1
    assert body["strategy"] == "fedavg"


def test_the_model_list_and_detail_show_the_latest_version(operator_client):
    fl_model = make_fl_model(slug="m")

    listed = operator_client.get(f"{API}/models")
    detail = operator_client.get(f"{API}/models/m")

    assert [(m["slug"], m["latest_version"]) for m in listed.json()] == [("m", 1)]
    assert detail.json()["id"] == fl_model.pk


def test_an_unknown_model_is_not_found(operator_client):
    assert _error(operator_client.get(f"{API}/models/nope"), 404) == "model_not_found"
    assert _error(operator_client.get(f"{API}/models/nope/versions"), 404) == "model_not_found"


@pytest.mark.parametrize(
    ("payload", "code"),
    [
        ({"name": "m", "tensors": []}, "invalid_tensors"),
        ({"name": "m"}, "tensors_or_template"),
        ({"name": "m", "template": "nope"}, "unknown_template"),
        ({"name": "m", "template": "recommender"}, "invalid_dims"),
        ({"name": "m", "template": "recommender", "dims": {"n_items": 0}}, "invalid_dims"),
        ({"name": "m", "tensors": [{"name": "w", "shape": [0], "dtype": "float32"}]}, "min_value"),
        (
            {"name": "m", "tensors": [{"name": "w", "shape": [1], "dtype": "float32"}] * 2},
            "invalid_tensors",
        ),
        (
            {"name": "m", "tensors": [{"name": "a b", "shape": [1], "dtype": "float32"}]},
            "invalid_tensors",
        ),
        ({"name": "m", "tensors": SMALL_TENSORS, "init": "ones"}, "invalid_choice"),
        ({"name": "m", "tensors": SMALL_TENSORS, "strategy": "fedsgd"}, "unknown_strategy"),
    ],
)
def test_a_model_with_invalid_tensors_or_options_is_refused(operator_client, payload, code):
    assert _error(_post(operator_client, "models", payload), 400) == code
    assert not FederatedModel.objects.exists()


@pytest.mark.parametrize(
    ("hints", "code"),
    [
        ({"epochs": 0}, "invalid_hints"),
        ({"learning_rate": -1}, "invalid_hints"),
        ({"batch_size": "many"}, "invalid_hints"),
        ({"epochs": 1.5}, "invalid_hints"),
        ("fast", "not_a_dict"),
    ],
)
def test_a_model_with_invalid_training_hints_is_refused(operator_client, hints, code):
    payload = {"name": "m", "tensors": SMALL_TENSORS, "training_hints": hints}

    assert _error(_post(operator_client, "models", payload), 400) == code
    assert not FederatedModel.objects.exists()


def test_a_model_with_an_unknown_training_hint_is_refused(operator_client):
    payload = {"name": "m", "tensors": SMALL_TENSORS, "training_hints": {"epoch": 5}}

    assert _error(_post(operator_client, "models", payload), 400) == "invalid_hints"
    assert not FederatedModel.objects.exists()


@pytest.fixture
def csrf_exempt_operator_client(operator) -> Client:
    """A staff session without CSRF enforcement: reaches the version upload view's own logic,
    which the CSRF bug above hides from a browser-like session."""
    client = Client()
    client.force_login(operator)
    return client


def _upload(client: Client, body: bytes, slug: str = "m"):
    return client.post(f"{API}/models/{slug}/versions", data=body, content_type=BINARY)


def test_an_operator_uploads_an_initial_version_from_a_browser_session(operator_client):
    make_fl_model(slug="m", init="none")

    response = _upload(operator_client, codec.encode(small_weights(0.25)))

    assert response.status_code == 201, response.content


def test_weights_sent_as_json_from_a_browser_session_get_binary_body_required(operator_client):
    make_fl_model(slug="m", init="none")

    response = _post(operator_client, "models/m/versions", {"weight": [1, 2, 3, 4], "bias": [0]})

    assert _error(response, 415) == "binary_body_required"


def test_an_initial_version_is_uploaded_as_binary_safetensors(csrf_exempt_operator_client):
    make_fl_model(slug="m", init="none")
    body = codec.encode(small_weights(0.25))

    response = _upload(csrf_exempt_operator_client, body)

    assert response.status_code == 201, response.content
    data = response.json()
    assert data["number"] == 1
    assert data["sha256"] == hashlib.sha256(body).hexdigest()
    assert data["size_bytes"] == len(body)
    assert data["weights_url"] == "/api/v1/models/m/versions/1/weights"
    assert data["produced_by_round"] is None
    version = ModelVersion.objects.get()
    assert (Path(settings.MEDIA_ROOT) / version.weights.name).read_bytes() == body


def test_the_version_list_shows_versions_in_order(operator_client):
    fl_model = make_fl_model(slug="m")
    with artifacts.written(small_weights(2.0)) as blob:
        services.version_create(fl_model=fl_model, blob=blob)

    response = operator_client.get(f"{API}/models/m/versions")

    assert response.status_code == 200
    assert [v["number"] for v in response.json()] == [1, 2]
    assert response.json()[1]["weights_url"] == "/api/v1/models/m/versions/2/weights"


@pytest.mark.parametrize(
    ("weights", "code"),
    [
        ({"bias": np.ones(1, np.float32), "weight": np.ones(3, np.float32)}, "shape_mismatch"),
        ({"bias": np.ones(1, np.float32)}, "tensor_names_mismatch"),
        (
            {"bias": np.full(1, np.nan, np.float32), "weight": np.ones(4, np.float32)},
            "non_finite_values",
        ),
    ],
)
def test_uploading_weights_that_do_not_fit_the_model_is_refused(
    csrf_exempt_operator_client, weights, code
):
    make_fl_model(slug="m", init="none")

    response = _upload(csrf_exempt_operator_client, codec.encode(weights))

    assert _error(response, 400) == code
    assert not ModelVersion.objects.exists()
    assert _stored_files() == []


def test_uploading_garbage_weights_is_refused(csrf_exempt_operator_client):
    make_fl_model(slug="m", init="none")

    response = _upload(csrf_exempt_operator_client, b"junk")

    assert _error(response, 400) == "invalid_safetensors"
    assert _stored_files() == []


def test_uploading_weights_as_json_is_refused(csrf_exempt_operator_client):
    make_fl_model(slug="m", init="none")

    response = _post(
        csrf_exempt_operator_client, "models/m/versions", {"weight": [1, 2, 3, 4], "bias": [0]}
    )

    assert _error(response, 415) == "binary_body_required"
    assert not ModelVersion.objects.exists()


def test_uploading_weights_while_a_round_runs_is_a_conflict(csrf_exempt_operator_client):
    MerchantFactory()
    fl_model = make_fl_model(slug="m")
    make_open_round(fl_model=fl_model, min_updates=1)

    response = _upload(csrf_exempt_operator_client, codec.encode(small_weights()))

    assert _error(response, 409) == "round_in_progress"
    assert ModelVersion.objects.count() == 1
    assert len(list((Path(settings.MEDIA_ROOT) / "versions").rglob("*.safetensors"))) == 1


def test_uploading_weights_to_an_unknown_model_is_not_found(csrf_exempt_operator_client):
    response = _upload(csrf_exempt_operator_client, codec.encode(small_weights()), slug="nope")

    assert _error(response, 404) == "model_not_found"


def test_uploading_an_empty_body_as_weights_is_refused(csrf_exempt_operator_client):
    make_fl_model(slug="m", init="none")

    response = csrf_exempt_operator_client.post(
        f"{API}/models/m/versions",
        data=b"",
        content_type=BINARY,
        CONTENT_TYPE=BINARY,
        CONTENT_LENGTH="0",
    )

    assert _error(response, 400) == "empty_body"


def test_uploading_weights_larger_than_the_limit_is_refused_with_413(
    csrf_exempt_operator_client, settings
):
    settings.FLPORTAL_MAX_UPDATE_BYTES = 1024
    make_fl_model(slug="m", init="none")
    body = codec.encode({"bias": np.ones(1, np.float32), "weight": np.ones(300, np.float32)})

    response = _upload(csrf_exempt_operator_client, body)

    assert _error(response, 413) == "update_too_large"
    assert not ModelVersion.objects.exists()


# --- rounds ---------------------------------------------------------------------------------


def test_an_operator_opens_a_round(operator, operator_client):
    MerchantFactory()
    MerchantFactory(status="pending")
    make_fl_model(slug="m")

    response = _post(operator_client, "rounds", {"model": "m", "min_updates": 1})

    assert response.status_code == 201
    [body] = response.json()
    assert body["status"] == "open"
    assert body["number"] == 1
    assert body["participants"] == 1
    assert body["base_version"] == 1
    assert body["submitted"] == 0
    assert Round.objects.get().created_by == operator


def test_a_count_of_three_schedules_a_series(operator_client):
    MerchantFactory()
    make_fl_model(slug="m")

    response = _post(operator_client, "rounds", {"model": "m", "min_updates": 1, "count": 3})

    assert response.status_code == 201
    assert [(r["number"], r["status"]) for r in response.json()] == [
        (1, "open"),
        (2, "scheduled"),
        (3, "scheduled"),
    ]
    assert Round.objects.count() == 3


@pytest.mark.parametrize(
    ("payload", "code"),
    [
        ({"model": "m", "min_updates": 0}, "min_value"),
        ({"model": "m"}, "invalid_input"),
        ({"model": "m", "min_updates": 3, "target_updates": 2}, "invalid_target"),
        ({"model": "m", "min_updates": 1, "duration_seconds": 0}, "min_value"),
        ({"model": "m", "min_updates": 1, "count": 0}, "min_value"),
        ({"model": "m", "min_updates": 1, "count": 101}, "max_value"),
        ({"model": "m", "min_updates": "two"}, "invalid_input"),
    ],
)
def test_a_round_with_invalid_settings_is_refused(operator_client, payload, code):
    make_fl_model(slug="m")

    assert _error(_post(operator_client, "rounds", payload), 400) == code
    assert not Round.objects.exists()


def test_a_round_opening_in_the_past_is_refused(operator_client):
    make_fl_model(slug="m")
    past = (timezone.now() - timedelta(hours=1)).isoformat()

    response = _post(operator_client, "rounds", {"model": "m", "min_updates": 1, "opens_at": past})

    assert _error(response, 400) == "invalid_opens_at"
    assert not Round.objects.exists()


def test_a_round_of_an_unknown_model_is_not_found(operator_client):
    response = _post(operator_client, "rounds", {"model": "nope", "min_updates": 1})

    assert _error(response, 404) == "model_not_found"


def test_a_round_of_a_model_without_weights_is_a_conflict(operator_client):
    make_fl_model(slug="m", init="none")

    response = _post(operator_client, "rounds", {"model": "m", "min_updates": 1})

    assert _error(response, 409) == "model_has_no_version"
    assert not Round.objects.exists()


def test_the_round_list_filters_by_status_and_model(operator_client):
    MerchantFactory()
    first = make_fl_model(slug="a")
    second = make_fl_model(slug="b")
    open_a = make_open_round(fl_model=first, min_updates=1)
    make_open_round(fl_model=first, min_updates=1)  # scheduled behind it
    open_b = make_open_round(fl_model=second, min_updates=1)

    everything = operator_client.get(f"{API}/rounds").json()
    open_only = operator_client.get(f"{API}/rounds?status=open").json()
    of_a = operator_client.get(f"{API}/rounds?model=a&status=scheduled").json()

    assert len(everything) == 3
    assert {r["id"] for r in open_only} == {open_a.pk, open_b.pk}
    assert [(r["model"], r["number"]) for r in of_a] == [("a", 2)]


def test_the_round_list_refuses_an_unknown_status(operator_client):
    assert _error(operator_client.get(f"{API}/rounds?status=done"), 400) == "invalid_status"


def test_the_round_detail_shows_its_updates(operator_client):
    merchant, _ = MerchantFactory(), MerchantFactory()
    fl_round = make_open_round(min_updates=2)
    submit_update(fl_round, merchant, num_examples=12, metrics={"loss": 0.5})

    response = operator_client.get(f"{API}/rounds/{fl_round.pk}")

    assert response.status_code == 200
    body = response.json()
    assert (body["status"], body["submitted"], body["participants"]) == ("open", 1, 2)
    assert [(u["merchant"], u["num_examples"]) for u in body["updates"]] == [(merchant.slug, 12)]


def test_an_unknown_round_is_not_found(operator_client):
    assert _error(operator_client.get(f"{API}/rounds/999"), 404) == "round_not_found"
    assert _error(_post(operator_client, "rounds/999/close"), 404) == "round_not_found"
    assert _error(_post(operator_client, "rounds/999/cancel"), 404) == "round_not_found"


def test_closing_a_round_below_its_quorum_is_refused(operator_client):
    MerchantFactory()
    MerchantFactory()
    fl_round = make_open_round(min_updates=2)

    response = _post(operator_client, f"rounds/{fl_round.pk}/close")

    assert _error(response, 409) == "below_quorum"
    fl_round.refresh_from_db()
    assert fl_round.status == "open"


def test_closing_a_round_with_its_quorum_starts_aggregation(operator_client, aggregate_calls):
    merchant, _ = MerchantFactory(), MerchantFactory()
    fl_round = make_open_round(min_updates=1, target_updates=2)
    submit_update(fl_round, merchant)

    response = _post(operator_client, f"rounds/{fl_round.pk}/close")
    again = _post(operator_client, f"rounds/{fl_round.pk}/close")

    assert response.status_code == 200
    assert response.json()["status"] == "aggregating"
    assert _error(again, 409) == "round_not_open"


def test_cancelling_a_round_twice_is_refused_the_second_time(operator_client):
    MerchantFactory()
    fl_round = make_open_round(min_updates=1)

    first = _post(operator_client, f"rounds/{fl_round.pk}/cancel")
    second = _post(operator_client, f"rounds/{fl_round.pk}/cancel")

    assert first.status_code == 200
    assert first.json()["status"] == "cancelled"
    assert _error(second, 409) == "round_not_cancellable"
