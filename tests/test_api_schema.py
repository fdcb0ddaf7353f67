"""The OpenAPI schema, the Swagger page, and JSON 404s under /api/."""

from __future__ import annotations

import io

import pytest
from django.core.management import call_command
from django.test import Client
from drf_spectacular.drainage import GENERATOR_STATS

UPDATE_PATH = "/api/v1/rounds/{round_id}/update"


@pytest.fixture
def schema() -> dict:
    response = Client().get("/api/schema/?format=json")
    assert response.status_code == 200
    return response.json()


def test_the_schema_is_an_openapi_3_document(schema):
    assert schema["openapi"].startswith("3.")
    assert schema["info"]["title"] == "flportal API"


def test_the_schema_describes_the_binary_update_upload(schema):
    put = schema["paths"][UPDATE_PATH]["put"]

    assert "application/octet-stream" in put["requestBody"]["content"]
    parameters = {p["name"]: p for p in put["parameters"] if p["in"] == "query"}
    assert parameters["num_examples"]["required"] is True
    assert "metrics" in parameters
    assert {"200", "201"} <= set(put["responses"])


def test_the_schema_lists_the_merchant_and_operator_endpoints(schema):
    paths = set(schema["paths"])

    assert {
        "/api/v1/rounds",
        "/api/v1/rounds/{round_id}",
        UPDATE_PATH,
        "/api/v1/models/{slug}/versions/{number}/weights",
        "/api/v1/me",
        "/api/v1/operator/merchants",
        "/api/v1/operator/models",
        "/api/v1/operator/rounds",
    } <= paths


def test_the_schema_is_served_as_yaml_by_default():
    response = Client().get("/api/schema/")

    assert response.status_code == 200
    assert response["Content-Type"].startswith("application/vnd.oai.openapi")
    assert response.content.startswith(b"openapi: 3.")


def test_the_docs_page_is_html():
    response = Client().get("/api/docs/")

    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/html")
    assert b"swagger" in response.content.lower()


def test_the_schema_generates_without_warnings_and_validates():
    GENERATOR_STATS.reset()  # count only this generation's warnings
    out, err = io.StringIO(), io.StringIO()

    call_command("spectacular", "--validate", "--fail-on-warn", stdout=out, stderr=err)

    assert out.getvalue().startswith("openapi: 3.")


@pytest.mark.parametrize(
    "path", ["/api/v1/nothing-here", "/api/v1/rounds/abc", "/api/v1/operator/", "/api/v2/rounds"]
)
def test_an_unknown_api_path_is_a_json_404(path):
    response = Client().get(path)

    assert response.status_code == 404
    assert response["Content-Type"] == "application/json"
    body = response.json()
    assert set(body) == {"error", "detail"}
    assert body["error"] == "not_found"


def test_an_unknown_page_outside_the_api_is_not_json():
    response = Client().get("/no-such-page/")

    assert response.status_code == 404
    assert not response["Content-Type"].startswith("application/json")
