"""HTTP client for the flportal merchant API, with retries and exponential backoff.

Retries cover what is safe to retry: connection failures, 429 and 502/503/504. Uploads are
idempotent on the server (the same update is accepted once), so retrying them is safe too.
"""

from __future__ import annotations

import base64
import json
import logging
import random
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import httpx
import numpy as np

from clients.sdk import codec

logger = logging.getLogger("flportal.client")

RETRY_STATUSES = frozenset({429, 502, 503, 504})


class ApiError(Exception):
    """The server answered with an error: ``status``, stable ``code`` and human ``detail``."""

    def __init__(self, status: int, code: str, detail: Any) -> None:
        super().__init__(f"{status} {code}: {detail}")
        self.status = status
        self.code = code
        self.detail = detail


@dataclass(frozen=True)
class RoundInfo:
    id: int
    number: int
    model: str
    status: str
    deadline_at: str | None
    base_version: int
    weights_url: str
    weights_sha256: str
    training_hints: dict[str, Any]
    tensors: list[codec.TensorSpec]
    my_update: dict[str, Any] | None
    secure_aggregation: bool = False

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> RoundInfo:
        version = data["base_version"]
        return cls(
            id=int(data["id"]),
            number=int(data["number"]),
            model=str(data["model"]),
            status=str(data["status"]),
            deadline_at=data.get("deadline_at"),
            base_version=int(version["number"]),
            weights_url=str(version["weights_url"]),
            weights_sha256=str(version["sha256"]),
            training_hints=dict(data.get("training_hints") or {}),
            tensors=[codec.TensorSpec.from_dict(t) for t in data.get("tensors", [])],
            my_update=data.get("my_update"),
            secure_aggregation=bool(data.get("secure_aggregation", False)),
        )


@dataclass(frozen=True)
class PendingEvaluation:
    model: str
    version: int
    sha256: str
    weights_url: str


class FlportalClient:
    def __init__(
        self,
        base_url: str,
        token: str,
        *,
        timeout: float = 60.0,
        retries: int = 6,
        backoff: float = 0.25,
        max_backoff: float = 10.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.retries = retries
        self.backoff = backoff
        self.max_backoff = max_backoff
        self._http = httpx.Client(
            base_url=base_url.rstrip("/"),
            headers={"Authorization": f"Bearer {token}", "User-Agent": "flportal-client/1"},
            timeout=timeout,
            transport=transport,
        )
        self._weights_cache: dict[str, tuple[str, dict[str, np.ndarray]]] = {}

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> FlportalClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- API -----------------------------------------------------------------------------
    def me(self) -> dict[str, Any]:
        return self._json("GET", "/api/v1/me")

    def rounds(self) -> list[RoundInfo]:
        """Open rounds this merchant is invited to."""
        data = self._json("GET", "/api/v1/rounds")
        return [RoundInfo.from_json(item) for item in data["results"]]

    def round(self, round_id: int) -> RoundInfo:
        return RoundInfo.from_json(self._json("GET", f"/api/v1/rounds/{round_id}"))

    def download_weights(self, fl_round: RoundInfo) -> dict[str, np.ndarray]:
        """Download the round's base weights; an unchanged version is not transferred twice."""
        return self.fetch_weights(fl_round.weights_url)

    def fetch_weights(self, weights_url: str) -> dict[str, np.ndarray]:
        """Download a version's weights (conditional on the cached ETag)."""
        cached = self._weights_cache.get(weights_url)
        headers = {"If-None-Match": f'"{cached[0]}"'} if cached else {}
        response = self._request("GET", weights_url, headers=headers)
        if response.status_code == 304 and cached:
            return cached[1]
        etag = response.headers.get("ETag", "").strip('"')
        arrays = codec.decode(response.content)
        self._weights_cache = {weights_url: (etag, arrays)}
        return arrays

    def pending_evaluations(self) -> list[PendingEvaluation]:
        """Versions this merchant helped train and has not evaluated yet."""
        data = self._json("GET", "/api/v1/evaluations/pending")
        return [
            PendingEvaluation(
                str(d["model"]), int(d["version"]), str(d["sha256"]), str(d["weights_url"])
            )
            for d in data["results"]
        ]

    def submit_evaluation(
        self, model: str, version: int, *, num_examples: int, metrics: Mapping[str, float]
    ) -> dict[str, Any]:
        body = {
            "num_examples": int(num_examples),
            "metrics": {k: float(v) for k, v in metrics.items()},
        }
        return self._json("PUT", f"/api/v1/models/{model}/versions/{version}/evaluation", json=body)

    def upload_update(
        self,
        round_id: int,
        weights: Mapping[str, np.ndarray],
        *,
        num_examples: int,
        metrics: Mapping[str, float] | None = None,
    ) -> dict[str, Any]:
        params: dict[str, str] = {"num_examples": str(int(num_examples))}
        if metrics:
            params["metrics"] = json.dumps({k: float(v) for k, v in metrics.items()})
        return self._json(
            "PUT",
            f"/api/v1/rounds/{round_id}/update",
            params=params,
            content=codec.encode(weights),
            headers={"Content-Type": "application/octet-stream"},
        )

    def update_status(self, round_id: int) -> dict[str, Any]:
        return self._json("GET", f"/api/v1/rounds/{round_id}/update")

    # --- secure aggregation ----------------------------------------------------------------
    def register_public_key(self, public_key: bytes) -> dict[str, Any]:
        body = {"public_key": base64.b64encode(public_key).decode()}
        return self._json("PUT", "/api/v1/me/public-key", json=body)

    def secagg_state(self, round_id: int) -> dict[str, Any]:
        return self._json("GET", f"/api/v1/rounds/{round_id}/secagg")

    def secagg_advertise(self, round_id: int, s_public_key: bytes) -> dict[str, Any]:
        body = {"s_public_key": base64.b64encode(s_public_key).decode()}
        return self._json("POST", f"/api/v1/rounds/{round_id}/secagg/keys", json=body)

    def secagg_share(self, round_id: int, sealed: Mapping[int, bytes]) -> dict[str, Any]:
        return self._json(
            "POST", f"/api/v1/rounds/{round_id}/secagg/shares", json={"shares": _b64map(sealed)}
        )

    def secagg_masked(
        self, round_id: int, masked: np.ndarray, *, metrics: Mapping[str, float] | None = None
    ) -> dict[str, Any]:
        params = (
            {"metrics": json.dumps({k: float(v) for k, v in metrics.items()})} if metrics else {}
        )
        return self._json(
            "PUT",
            f"/api/v1/rounds/{round_id}/secagg/masked",
            params=params,
            content=codec.encode({"masked": masked}),
            headers={"Content-Type": "application/octet-stream"},
        )

    def secagg_reveal(self, round_id: int, shares: Mapping[int, bytes]) -> dict[str, Any]:
        return self._json(
            "POST", f"/api/v1/rounds/{round_id}/secagg/reveal", json={"shares": _b64map(shares)}
        )

    # --- plumbing ------------------------------------------------------------------------
    def _json(self, method: str, url: str, **kwargs: Any) -> Any:
        return self._request(method, url, **kwargs).json()

    def _request(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        attempt = 0
        while True:
            try:
                response = self._http.request(method, url, **kwargs)
            except httpx.TransportError as exc:
                if attempt >= self.retries:
                    raise
                logger.warning("%s %s failed (%s); retrying", method, url, exc)
            else:
                if response.status_code < 400 or response.status_code == 304:
                    return response
                if response.status_code not in RETRY_STATUSES or attempt >= self.retries:
                    raise _api_error(response)
                retry_after = _retry_after(response)
                if retry_after is not None:
                    time.sleep(min(retry_after, self.max_backoff))
                    attempt += 1
                    continue
            delay = min(self.max_backoff, self.backoff * 2**attempt)
            time.sleep(delay * (0.5 + random.random() / 2))
            attempt += 1


def _b64map(values: Mapping[int, bytes]) -> dict[str, str]:
    return {str(k): base64.b64encode(v).decode() for k, v in values.items()}


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("Retry-After")
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


def _api_error(response: httpx.Response) -> ApiError:
    try:
        body = response.json()
        return ApiError(response.status_code, str(body.get("error", "error")), body.get("detail"))
    except (ValueError, AttributeError):
        return ApiError(response.status_code, "http_error", response.text[:500])
