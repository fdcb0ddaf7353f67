"""PUT and GET /api/v1/rounds/<id>/update: a merchant's update as a binary safetensors body."""

from __future__ import annotations

import io
import json
from pathlib import Path
from urllib.parse import urlencode

import numpy as np
import pytest
import safetensors.numpy
from django.conf import settings
from django.test import Client

from clients import services as client_services
from clients.models import Merchant
from clients.sdk import codec
from flportal.errors import PayloadTooLarge
from rounds import artifacts, services
from rounds.models import Round, Update
from tests.factories import MerchantFactory, make_open_round, small_weights, token_for

pytestmark = pytest.mark.django_db

BINARY = "application/octet-stream"


def _error(response, status: int) -> str:
    assert response.status_code == status, response.content
    body = response.json()
    assert set(body) == {"error", "detail"}
    return body["error"]


def _url(fl_round, **params) -> str:
    params.setdefault("num_examples", 10)
    return f"/api/v1/rounds/{fl_round.pk}/update?{urlencode(params)}"


def _put(client, fl_round, body: bytes, *, content_type: str = BINARY, **params):
    return client.put(_url(fl_round, **params), data=body, content_type=content_type)


def _stored_files() -> list[Path]:
    """Every file under the media root: stored updates and leftover temporary files."""
    root = Path(settings.MEDIA_ROOT)
    return sorted(p for p in root.rglob("*") if p.is_file() and "versions" not in p.parts)


def _assert_nothing_stored() -> None:
    assert not Update.objects.exists()
    assert _stored_files() == []


@pytest.fixture
def fl_round(merchant):
    """An open round of the small model; ``merchant`` and one other merchant are invited."""
    MerchantFactory()
    return make_open_round(min_updates=2)


@pytest.fixture
def body() -> bytes:
    return codec.encode(small_weights(0.5))


# --- happy path and idempotency ---------------------------------------------------------------


def test_an_update_is_accepted_with_201(merchant, merchant_client, fl_round, body):
    response = _put(merchant_client, fl_round, body, num_examples=120, metrics='{"loss": 0.25}')

    assert response.status_code == 201, response.content
    data = response.json()
    update = Update.objects.get()
    assert data["round"] == fl_round.pk
    assert data["merchant"] == merchant.slug
    assert data["status"] == "accepted"
    assert data["num_examples"] == 120
    assert data["metrics"] == {"loss": 0.25}
    assert data["size_bytes"] == len(body)
    assert data["sha256"] == update.sha256
    stored = Path(settings.MEDIA_ROOT) / update.weights.name
    assert stored.read_bytes() == body
    assert _stored_files() == [stored]  # no temporary file left behind


def test_sending_the_same_update_again_answers_200_and_stores_it_once(
    merchant_client, fl_round, body
):
    first = _put(merchant_client, fl_round, body)
    again = _put(merchant_client, fl_round, body)

    assert (first.status_code, again.status_code) == (201, 200)
    assert again.json() == first.json()
    assert Update.objects.count() == 1
    assert len(_stored_files()) == 1


def test_a_different_update_to_the_same_round_is_a_conflict(merchant_client, fl_round, body):
    first = _put(merchant_client, fl_round, body)

    response = _put(merchant_client, fl_round, codec.encode(small_weights(0.75)))

    assert _error(response, 409) == "update_already_submitted"
    assert list(Update.objects.values_list("sha256", flat=True)) == [first.json()["sha256"]]
    assert len(_stored_files()) == 1


def test_a_retry_is_still_answered_after_the_round_closed(
    merchant, merchant_client, fl_round, body, aggregate_calls
):
    _put(merchant_client, fl_round, body)
    other = fl_round.participants.exclude(pk=merchant.pk).get()
    _put(Client(HTTP_AUTHORIZATION=f"Bearer {token_for(other)}"), fl_round, body)
    fl_round.refresh_from_db()
    assert fl_round.status == Round.Status.AGGREGATING

    response = _put(merchant_client, fl_round, body)

    assert response.status_code == 200
    assert Update.objects.count() == 2


def test_a_content_type_with_parameters_is_accepted(merchant_client, fl_round, body):
    response = _put(merchant_client, fl_round, body, content_type=f"{BINARY}; charset=binary")

    assert response.status_code == 201


def test_reaching_the_target_closes_the_round(
    merchant, merchant_client, fl_round, body, aggregate_calls
):
    other = fl_round.participants.exclude(pk=merchant.pk).get()
    _put(merchant_client, fl_round, body)
    _put(Client(HTTP_AUTHORIZATION=f"Bearer {token_for(other)}"), fl_round, body)

    fl_round.refresh_from_db()
    assert fl_round.status == Round.Status.AGGREGATING


# --- reading my update ----------------------------------------------------------------------


def test_get_shows_my_update_and_404_before_i_sent_it(merchant, merchant_client, fl_round, body):
    url = f"/api/v1/rounds/{fl_round.pk}/update"
    before = merchant_client.get(url)
    _put(merchant_client, fl_round, body, num_examples=7)
    after = merchant_client.get(url)

    assert _error(before, 404) == "update_not_found"
    assert after.status_code == 200
    assert after.json()["merchant"] == merchant.slug
    assert after.json()["num_examples"] == 7


def test_get_does_not_show_another_merchants_update(merchant, merchant_client, fl_round, body):
    other = fl_round.participants.exclude(pk=merchant.pk).get()
    _put(Client(HTTP_AUTHORIZATION=f"Bearer {token_for(other)}"), fl_round, body)

    response = merchant_client.get(f"/api/v1/rounds/{fl_round.pk}/update")

    assert _error(response, 404) == "update_not_found"


# --- invalid query parameters -----------------------------------------------------------------


@pytest.mark.parametrize("value", [None, "", "0", "-3", "abc", "1.5", "1e3", str(10**12 + 1)])
def test_a_missing_or_invalid_example_count_is_refused(merchant_client, fl_round, body, value):
    params = {} if value is None else {"num_examples": value}
    url = f"/api/v1/rounds/{fl_round.pk}/update?{urlencode(params)}"

    response = merchant_client.put(url, data=body, content_type=BINARY)

    assert _error(response, 400) == "invalid_num_examples"
    _assert_nothing_stored()


@pytest.mark.parametrize(
    "metrics",
    [
        "not json",
        "[1, 2]",
        '"loss"',
        "3",
        '{"loss": NaN}',
        '{"loss": Infinity}',
        '{"loss": 1e999}',
        '{"loss": "0.3"}',
        '{"loss": true}',
        '{"loss": null}',
        '{"loss": {"value": 1}}',
        json.dumps({f"m{i}": i for i in range(33)}),
        '{"1st": 1}',
        '{"bad name": 1}',
        '{"": 1}',
        json.dumps({"x" * 65: 1}),
    ],
)
def test_invalid_metrics_are_refused(merchant_client, fl_round, body, metrics):
    response = _put(merchant_client, fl_round, body, metrics=metrics)

    assert _error(response, 400) == "invalid_metrics"
    _assert_nothing_stored()


def test_a_metric_too_large_for_a_float_is_refused(merchant_client, fl_round, body):
    response = _put(merchant_client, fl_round, body, metrics='{"loss": 1' + "0" * 400 + "}")

    assert _error(response, 400) == "invalid_metrics"
    _assert_nothing_stored()


def test_32_well_named_metrics_are_accepted(merchant_client, fl_round, body):
    metrics = {f"m.{i}-x_y": i / 10 for i in range(32)}

    response = _put(merchant_client, fl_round, body, metrics=json.dumps(metrics))

    assert response.status_code == 201
    assert response.json()["metrics"] == metrics


# --- invalid bodies -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "payload",
    [
        {"model_params": [[0.1, 0.2]], "train_data": [[1, 2, 3]]},
        {"bias": [1.0], "weight": [1.0, 2.0, 3.0, 4.0]},
    ],
)
def test_a_json_body_is_refused_with_415(merchant_client, fl_round, payload):
    response = _put(
        merchant_client, fl_round, json.dumps(payload).encode(), content_type="application/json"
    )

    assert _error(response, 415) == "binary_body_required"
    _assert_nothing_stored()


@pytest.mark.parametrize("content_type", ["text/plain", "multipart/form-data; boundary=x"])
def test_other_content_types_are_refused_with_415(merchant_client, fl_round, body, content_type):
    response = _put(merchant_client, fl_round, body, content_type=content_type)

    assert _error(response, 415) == "binary_body_required"
    _assert_nothing_stored()


@pytest.mark.parametrize(
    "garbage",
    [b"garbage", b"\x00" * 64, b'\x10\x00\x00\x00\x00\x00\x00\x00{"a": 1}        '],
)
def test_bytes_that_are_not_safetensors_are_refused(merchant_client, fl_round, garbage):
    assert _error(_put(merchant_client, fl_round, garbage), 400) == "invalid_safetensors"
    _assert_nothing_stored()


@pytest.mark.parametrize(
    ("weights", "code"),
    [
        ({"bias": np.ones(1, np.float32), "weight": np.ones(5, np.float32)}, "shape_mismatch"),
        ({"bias": np.ones(1, np.float32), "weight": np.ones(4, np.float16)}, "dtype_mismatch"),
        ({"bias": np.ones(1, np.float32)}, "tensor_names_mismatch"),
        (
            {"bias": np.ones(1, np.float32), "weight": np.array([1, np.nan, 1, 1], np.float32)},
            "non_finite_values",
        ),
        (
            {"bias": np.full(1, -np.inf, np.float32), "weight": np.ones(4, np.float32)},
            "non_finite_values",
        ),
    ],
)
def test_an_update_that_does_not_fit_the_model_is_refused(merchant_client, fl_round, weights, code):
    response = _put(merchant_client, fl_round, codec.encode(weights))

    assert _error(response, 400) == code
    _assert_nothing_stored()


def test_an_unsupported_dtype_is_refused(merchant_client, fl_round):
    tensors = {"bias": np.ones(1, np.int32), "weight": np.ones(4, np.int32)}
    body = bytes(safetensors.numpy.save(tensors))

    assert _error(_put(merchant_client, fl_round, body), 400) == "unsupported_dtype"
    _assert_nothing_stored()


def test_an_empty_body_is_refused(merchant_client, fl_round):
    # the test client drops the content type of an empty body; a real client sends it
    response = merchant_client.put(
        _url(fl_round), data=b"", CONTENT_TYPE=BINARY, CONTENT_LENGTH="0"
    )

    assert _error(response, 400) == "empty_body"
    _assert_nothing_stored()


def test_a_body_larger_than_the_limit_is_refused_with_413(merchant_client, fl_round, settings):
    settings.FLPORTAL_MAX_UPDATE_BYTES = 1024
    body = codec.encode({"bias": np.ones(1, np.float32), "weight": np.ones(300, np.float32)})
    assert len(body) > 1024

    assert _error(_put(merchant_client, fl_round, body), 413) == "update_too_large"
    _assert_nothing_stored()


def test_a_streamed_body_is_cut_off_at_the_limit_and_leaves_no_file(settings):
    settings.FLPORTAL_UPLOAD_CHUNK_BYTES = 100

    with pytest.raises(PayloadTooLarge) as excinfo:
        with artifacts.receive(io.BytesIO(b"x" * 5000), max_bytes=1024):
            pass

    assert excinfo.value.code == "update_too_large"
    assert _stored_files() == []


# --- round state, authentication, permissions, methods ---------------------------------------


def test_an_update_to_a_round_that_is_not_open_is_refused(merchant_client, fl_round, body):
    services.round_cancel(fl_round=fl_round)

    assert _error(_put(merchant_client, fl_round, body), 409) == "round_not_open"
    _assert_nothing_stored()


def test_a_round_i_was_not_invited_to_is_not_found(fl_round, body):
    newcomer = MerchantFactory()
    client = Client(HTTP_AUTHORIZATION=f"Bearer {token_for(newcomer)}")

    assert _error(_put(client, fl_round, body), 404) == "round_not_found"
    assert _error(client.get(f"/api/v1/rounds/{fl_round.pk}/update"), 404) == "round_not_found"
    _assert_nothing_stored()


def test_without_a_token_the_answer_is_401(fl_round, body):
    assert _error(_put(Client(), fl_round, body), 401) == "not_authenticated"
    _assert_nothing_stored()


def test_a_revoked_token_is_refused(merchant, fl_round, body):
    token, plaintext = client_services.token_issue(merchant=merchant)
    client_services.token_revoke(token=token)

    response = _put(Client(HTTP_AUTHORIZATION=f"Bearer {plaintext}"), fl_round, body)

    assert _error(response, 401) == "token_revoked"
    _assert_nothing_stored()


def test_a_suspended_merchant_cannot_upload(merchant, merchant_client, fl_round, body):
    Merchant.objects.filter(pk=merchant.pk).update(status="suspended")

    assert _error(_put(merchant_client, fl_round, body), 403) == "merchant_inactive"
    _assert_nothing_stored()


@pytest.mark.parametrize("method", ["post", "patch", "delete"])
def test_other_methods_are_not_allowed(merchant_client, fl_round, body, method):
    response = getattr(merchant_client, method)(_url(fl_round), data=body, content_type=BINARY)

    assert _error(response, 405) == "method_not_allowed"
    _assert_nothing_stored()
