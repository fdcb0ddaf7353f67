"""The SDK's HTTP behaviour, with httpx's MockTransport standing in for the network (no Django)."""

from __future__ import annotations

import json
import threading
from typing import Any

import httpx
import numpy as np
import pytest

from clients.sdk import ApiError, FlportalClient, TrainResult, codec
from clients.sdk.cli import run_merchant

WEIGHTS = {"w": np.arange(4, dtype=np.float32)}
BLOB = codec.encode(WEIGHTS)
SHA = "a" * 64


def round_json(round_id: int = 7, my_update: Any = None) -> dict[str, Any]:
    return {
        "id": round_id, "number": 1, "model": "m", "status": "open", "deadline_at": None,
        "base_version": {"number": 1, "sha256": SHA, "weights_url": "/w/1"},
        "training_hints": {"epochs": 1}, "my_update": my_update,
        "tensors": [{"name": "w", "shape": [4], "dtype": "float32"}],
    }  # fmt: skip


def client_for(handler: Any) -> FlportalClient:
    return FlportalClient("http://portal", "flp_token", transport=httpx.MockTransport(handler),
                          backoff=0.001, max_backoff=0.01)  # fmt: skip


def test_transient_errors_are_retried_with_backoff_until_success():
    calls: list[int] = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(1)
        if len(calls) < 3:
            return httpx.Response(503, json={"error": "unavailable", "detail": "busy"})
        return httpx.Response(200, json={"results": [round_json()]})

    rounds = client_for(handler).rounds()
    assert len(calls) == 3
    assert rounds[0].id == 7 and rounds[0].training_hints == {"epochs": 1}


def test_client_errors_are_not_retried_and_carry_the_server_code():
    calls: list[int] = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(1)
        return httpx.Response(409, json={"error": "round_not_open", "detail": "closed"})

    with pytest.raises(ApiError) as caught:
        client_for(handler).upload_update(7, WEIGHTS, num_examples=3)
    assert len(calls) == 1
    assert (caught.value.status, caught.value.code) == (409, "round_not_open")


def test_retries_give_up_after_the_configured_number():
    client = client_for(lambda request: httpx.Response(502, text="bad gateway"))
    client.retries = 2
    with pytest.raises(ApiError) as caught:
        client.me()
    assert caught.value.status == 502 and caught.value.code == "http_error"


def test_the_bearer_token_is_sent_and_the_upload_is_binary_safetensors_with_metadata():
    seen: dict[str, Any] = {}

    def handler(request: httpx.Request) -> httpx.Response:
        seen.update(
            auth=request.headers["Authorization"],
            type=request.headers["Content-Type"],
            params=dict(request.url.params),
            body=request.content,
            method=request.method,
        )
        return httpx.Response(201, json={"status": "accepted"})

    client_for(handler).upload_update(7, WEIGHTS, num_examples=12, metrics={"loss": 0.5})
    assert seen["auth"] == "Bearer flp_token"
    assert seen["method"] == "PUT" and seen["type"] == "application/octet-stream"
    assert seen["params"] == {"num_examples": "12", "metrics": json.dumps({"loss": 0.5})}
    np.testing.assert_array_equal(codec.decode(seen["body"])["w"], WEIGHTS["w"])


def test_an_unchanged_version_is_not_downloaded_twice():
    requests: list[str | None] = []

    def handler(request: httpx.Request) -> httpx.Response:
        requests.append(request.headers.get("If-None-Match"))
        if request.headers.get("If-None-Match") == f'"{SHA}"':
            return httpx.Response(304, headers={"ETag": f'"{SHA}"'})
        return httpx.Response(200, content=BLOB, headers={"ETag": f'"{SHA}"'})

    client = client_for(handler)
    fl_round = client_for(lambda r: httpx.Response(200, json=round_json())).round(7)
    first = client.download_weights(fl_round)
    second = client.download_weights(fl_round)
    assert requests == [None, f'"{SHA}"']
    np.testing.assert_array_equal(first["w"], second["w"])


def test_the_runner_trains_once_per_round_and_skips_rounds_that_moved_on():
    uploads: list[int] = []

    def handler(request: httpx.Request) -> httpx.Response:
        path = request.url.path
        if path == "/api/v1/rounds":
            return httpx.Response(200, json={"results": [round_json(7), round_json(8)]})
        if path == "/w/1":
            return httpx.Response(200, content=BLOB, headers={"ETag": f'"{SHA}"'})
        round_id = int(path.split("/")[4])
        if round_id == 7:
            return httpx.Response(409, json={"error": "round_not_open", "detail": "closed"})
        uploads.append(round_id)
        return httpx.Response(201, json={"status": "accepted"})

    def trainer(weights: Any, hints: Any) -> TrainResult:
        return TrainResult({"w": weights["w"] + 1}, num_examples=5, metrics={"loss": 0.1})

    sent = run_merchant(client_for(handler), trainer, max_rounds=1, stop=threading.Event())
    assert sent == 1 and uploads == [8]
