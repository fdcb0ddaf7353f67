"""GET /api/v1/models/<slug>/versions/<n>/weights: a version's safetensors, with ETag caching."""

from __future__ import annotations

import numpy as np
import pytest
from django.core.files.storage import default_storage
from django.test import Client

from clients import services as client_services
from clients.models import Merchant
from clients.sdk import codec
from rounds import services
from tests.factories import (
    MerchantFactory,
    make_fl_model,
    make_open_round,
    small_weights,
    submit_update,
    token_for,
)

pytestmark = pytest.mark.django_db


def _error(response, status: int) -> str:
    assert response.status_code == status, response.content
    body = response.json()
    assert set(body) == {"error", "detail"}
    return body["error"]


def _url(version) -> str:
    return f"/api/v1/models/{version.fl_model.slug}/versions/{version.number}/weights"


def _stored(version) -> bytes:
    with default_storage.open(version.weights.name, "rb") as fp:
        return fp.read()


@pytest.fixture
def version(merchant):
    """Version 1 of a model with random weights; ``merchant`` is invited to its open round."""
    fl_model = make_fl_model(init="random")
    make_open_round(fl_model=fl_model, min_updates=1)
    return fl_model.versions.get(number=1)


def test_the_weights_download_as_safetensors_that_decode_to_the_version(merchant_client, version):
    response = merchant_client.get(_url(version))

    assert response.status_code == 200
    body = response.getvalue()
    assert body == _stored(version)
    assert response["Content-Type"] == "application/octet-stream"
    assert response["Content-Length"] == str(version.size_bytes)
    assert response["Content-Disposition"] == (
        f'attachment; filename="{version.fl_model.slug}-v1.safetensors"'
    )
    weights = codec.decode(body)
    expected = codec.decode(_stored(version))
    assert weights.keys() == {"bias", "weight"}
    for name, array in expected.items():
        np.testing.assert_array_equal(weights[name], array)


def test_the_etag_is_the_quoted_sha256(merchant_client, version):
    response = merchant_client.get(_url(version))
    response.close()

    assert response["ETag"] == f'"{version.sha256}"'
    assert response["Cache-Control"] == "private, max-age=0, must-revalidate"


def test_a_matching_if_none_match_gives_304_without_a_body(merchant_client, version):
    response = merchant_client.get(_url(version), HTTP_IF_NONE_MATCH=f'"{version.sha256}"')

    assert response.status_code == 304
    assert response.content == b""
    assert response["ETag"] == f'"{version.sha256}"'


def test_if_none_match_with_a_list_of_tags_that_includes_it_gives_304(merchant_client, version):
    header = f'"{"0" * 64}", "{version.sha256}"'

    assert merchant_client.get(_url(version), HTTP_IF_NONE_MATCH=header).status_code == 304


@pytest.mark.parametrize("header", ['"0000"', "*not-quoted*", ""])
def test_another_if_none_match_gives_the_full_body(merchant_client, version, header):
    response = merchant_client.get(_url(version), HTTP_IF_NONE_MATCH=header)

    assert response.status_code == 200
    assert response.getvalue() == _stored(version)


def test_downloading_twice_gives_the_same_bytes(merchant_client, version):
    first = merchant_client.get(_url(version)).getvalue()
    second = merchant_client.get(_url(version)).getvalue()

    assert first == second


def test_an_aggregated_version_is_downloadable_by_a_participant(
    merchant, merchant_client, aggregate_calls
):
    fl_model = make_fl_model()
    fl_round = make_open_round(fl_model=fl_model, min_updates=1)
    submit_update(fl_round, merchant, small_weights(4.0))
    services.round_aggregate(round_id=fl_round.pk)
    produced = fl_model.versions.get(number=2)

    response = merchant_client.get(_url(produced))

    assert response.status_code == 200
    np.testing.assert_array_equal(codec.decode(response.getvalue())["weight"], [4, 4, 4, 4])


# --- refusals -------------------------------------------------------------------------------


def test_a_merchant_never_invited_to_a_round_of_the_model_gets_404(version):
    newcomer = MerchantFactory()
    client = Client(HTTP_AUTHORIZATION=f"Bearer {token_for(newcomer)}")

    assert _error(client.get(_url(version)), 404) == "version_not_found"


def test_a_merchant_of_another_model_gets_404(merchant_client, version):
    other_model = make_fl_model()  # no round: nobody is invited
    other_version = other_model.versions.get()

    assert _error(merchant_client.get(_url(other_version)), 404) == "version_not_found"


@pytest.mark.parametrize(
    "url",
    ["/api/v1/models/nope/versions/1/weights", "/api/v1/models/{slug}/versions/9/weights"],
)
def test_an_unknown_model_or_version_gets_404(merchant_client, version, url):
    response = merchant_client.get(url.format(slug=version.fl_model.slug))

    assert _error(response, 404) == "version_not_found"


@pytest.mark.parametrize("number", ["abc", "-1", "1.0"])
def test_a_version_number_that_is_not_an_integer_is_a_json_404(merchant_client, version, number):
    response = merchant_client.get(
        f"/api/v1/models/{version.fl_model.slug}/versions/{number}/weights"
    )

    assert _error(response, 404) == "not_found"


def test_without_a_token_the_answer_is_401(version):
    assert _error(Client().get(_url(version)), 401) == "not_authenticated"


def test_a_revoked_token_is_refused(merchant, version):
    token, plaintext = client_services.token_issue(merchant=merchant)
    client_services.token_revoke(token=token)
    client = Client(HTTP_AUTHORIZATION=f"Bearer {plaintext}")

    assert _error(client.get(_url(version)), 401) == "token_revoked"


def test_a_suspended_merchant_is_refused(merchant, merchant_client, version):
    Merchant.objects.filter(pk=merchant.pk).update(status="suspended")

    assert _error(merchant_client.get(_url(version)), 403) == "merchant_inactive"


@pytest.mark.parametrize("method", ["post", "put", "delete"])
def test_other_methods_are_not_allowed(merchant_client, version, method):
    response = getattr(merchant_client, method)(_url(version))

    assert _error(response, 405) == "method_not_allowed"
