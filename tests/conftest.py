"""Shared fixtures. Tests run against the database and Redis that the settings point at:
PostgreSQL and the machine's Redis in CI (DATABASE_URL, REDIS_URL), or a SQLite file and an
embedded Redis on a fresh machine."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from django.test import Client

from clients.models import Merchant
from tests.factories import MerchantFactory, OperatorFactory, token_for


@pytest.fixture(autouse=True)
def _media_root(settings, tmp_path: Path) -> Iterator[None]:
    """Every test stores its files in its own folder (no data is created here)."""
    settings.MEDIA_ROOT = tmp_path / "media"
    yield


@pytest.fixture
def merchant() -> Merchant:
    return MerchantFactory()


@pytest.fixture
def merchant_token(merchant: Merchant) -> str:
    return token_for(merchant)


@pytest.fixture
def merchant_client(merchant_token: str) -> Client:
    """A Django test client that authenticates as ``merchant`` with a bearer token."""
    return Client(HTTP_AUTHORIZATION=f"Bearer {merchant_token}")


@pytest.fixture
def operator():
    return OperatorFactory()


@pytest.fixture
def operator_client(operator) -> Client:
    """A logged-in staff session; CSRF checks are enforced like in a browser."""
    client = Client(enforce_csrf_checks=True)
    client.force_login(operator)
    client.get("/accounts/login/")  # sets the csrftoken cookie
    client.defaults["HTTP_X_CSRFTOKEN"] = client.cookies["csrftoken"].value
    return client


@pytest.fixture
def aggregate_calls(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Round ids passed to ``rounds.tasks.round_aggregate.delay``; nothing reaches a broker."""
    calls: list[int] = []
    monkeypatch.setattr("rounds.tasks.round_aggregate.delay", calls.append)
    return calls
