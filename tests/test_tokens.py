"""Merchant API tokens: the pure helpers in clients/tokens.py, then the services that use them."""

from __future__ import annotations

import hmac
import re
from datetime import timedelta
from types import SimpleNamespace

import pytest
from django.conf import settings
from django.db import connection
from django.utils import timezone

from clients import services, tokens
from clients.models import ApiToken
from flportal.errors import PermissionDenied, ValidationFailed
from rounds.models import Event
from tests.factories import MerchantFactory

KEY = "test-key"
TOKEN_FORMAT = re.compile(r"^flp_[a-z0-9]{8}_[A-Za-z0-9_-]{43}$")


# --- pure helpers (no database) ---------------------------------------------------------------


def test_a_generated_token_has_the_flp_format():
    generated = tokens.generate(KEY)

    assert TOKEN_FORMAT.match(generated.plaintext)
    assert generated.plaintext.startswith(f"flp_{generated.prefix}_")


def test_a_generated_token_stores_the_hmac_of_the_whole_plaintext():
    generated = tokens.generate(KEY)

    assert generated.hashed == tokens.hash_token(generated.plaintext, KEY)
    assert len(generated.hashed) == 64
    assert generated.plaintext not in generated.hashed


def test_two_generated_tokens_differ_in_prefix_and_secret():
    first, second = tokens.generate(KEY), tokens.generate(KEY)

    assert first.prefix != second.prefix
    assert first.plaintext.split("_")[-1] != second.plaintext.split("_")[-1]


def test_parse_prefix_returns_the_lookup_prefix_of_a_well_formed_token():
    generated = tokens.generate(KEY)

    assert tokens.parse_prefix(generated.plaintext) == generated.prefix


@pytest.mark.parametrize(
    "malformed",
    [
        "",
        "flp_",
        "flp_abcdefgh",
        "flp_abcdefgh_" + "a" * 42,  # secret one character short
        "flp_abcdefgh_" + "a" * 44,  # one character long
        "flp_abcdefg_" + "a" * 43,  # prefix one character short
        "flp_ABCDEFGH_" + "a" * 43,  # upper-case prefix
        "flq_abcdefgh_" + "a" * 43,  # wrong type prefix
        "FLP_abcdefgh_" + "a" * 43,
        "flp_abcdefgh_" + "a" * 42 + "=",  # not url-safe base64
        " flp_abcdefgh_" + "a" * 43,
        "flp_abcdefgh_" + "a" * 43 + " ",
        "Bearer flp_abcdefgh_" + "a" * 43,
    ],
)
def test_parse_prefix_rejects_a_malformed_token(malformed):
    assert tokens.parse_prefix(malformed) is None


def test_parse_prefix_rejects_a_token_with_a_trailing_newline():
    generated = tokens.generate(KEY)

    assert tokens.parse_prefix(generated.plaintext + "\n") is None


def test_matches_accepts_the_right_plaintext_and_key():
    generated = tokens.generate(KEY)

    assert tokens.matches(generated.plaintext, generated.hashed, KEY)


def test_matches_rejects_another_plaintext_with_the_same_prefix():
    generated = tokens.generate(KEY)
    forged = f"flp_{generated.prefix}_{'A' * 43}"

    assert not tokens.matches(forged, generated.hashed, KEY)


def test_matches_depends_on_the_server_key():
    generated = tokens.generate(KEY)

    assert not tokens.matches(generated.plaintext, generated.hashed, "another-key")
    assert tokens.hash_token(generated.plaintext, "another-key") != generated.hashed


def test_matches_compares_in_constant_time(monkeypatch):
    calls = []
    compare_digest = hmac.compare_digest

    def spy(a, b):
        calls.append((a, b))
        return compare_digest(a, b)

    monkeypatch.setattr(tokens.hmac, "compare_digest", spy)
    generated = tokens.generate(KEY)

    assert tokens.matches(generated.plaintext, generated.hashed, KEY)
    assert calls == [(generated.hashed, generated.hashed)]


# --- services (database) ----------------------------------------------------------------------


def _all_text_in_database() -> str:
    """Every cell of every table, as one string: to prove a secret is stored nowhere."""
    cells = []
    with connection.cursor() as cursor:
        for table in connection.introspection.table_names():
            cursor.execute(f"SELECT * FROM {connection.ops.quote_name(table)}")  # noqa: S608
            cells.extend(str(cell) for row in cursor.fetchall() for cell in row)
    return "\n".join(cells)


@pytest.mark.django_db
def test_token_issue_returns_the_plaintext_and_stores_only_its_hmac():
    merchant = MerchantFactory()

    token, plaintext = services.token_issue(merchant=merchant, label="pos-1")

    token.refresh_from_db()
    assert TOKEN_FORMAT.match(plaintext)
    assert token.prefix == tokens.parse_prefix(plaintext)
    assert token.hashed_key == tokens.hash_token(plaintext, settings.TOKEN_HASH_KEY)
    stored = _all_text_in_database()
    assert token.hashed_key in stored  # the scan does see the token row
    assert plaintext not in stored
    assert plaintext.split("_")[-1] not in stored


@pytest.mark.django_db
def test_token_issue_refuses_an_expiry_in_the_past():
    merchant = MerchantFactory()

    with pytest.raises(ValidationFailed) as excinfo:
        services.token_issue(merchant=merchant, expires_at=timezone.now() - timedelta(seconds=1))

    assert excinfo.value.code == "invalid_expiry"
    assert not ApiToken.objects.exists()


@pytest.mark.django_db
def test_token_authenticate_returns_the_merchant_of_a_valid_token():
    merchant = MerchantFactory()
    _, plaintext = services.token_issue(merchant=merchant)

    assert services.token_authenticate(plaintext=plaintext) == merchant


@pytest.mark.django_db
def test_token_authenticate_refuses_a_wrong_secret_with_a_right_prefix():
    merchant = MerchantFactory()
    token, _ = services.token_issue(merchant=merchant)

    with pytest.raises(PermissionDenied) as excinfo:
        services.token_authenticate(plaintext=f"flp_{token.prefix}_{'A' * 43}")

    assert excinfo.value.code == "invalid_token"


@pytest.mark.django_db
@pytest.mark.parametrize("plaintext", ["", "nonsense", "flp_zzzzzzzz_" + "a" * 43])
def test_token_authenticate_refuses_malformed_or_unknown_tokens(plaintext):
    MerchantFactory()

    with pytest.raises(PermissionDenied) as excinfo:
        services.token_authenticate(plaintext=plaintext)

    assert excinfo.value.code == "invalid_token"


@pytest.mark.django_db
def test_token_authenticate_refuses_a_revoked_token():
    token, plaintext = services.token_issue(merchant=MerchantFactory())
    services.token_revoke(token=token)

    with pytest.raises(PermissionDenied) as excinfo:
        services.token_authenticate(plaintext=plaintext)

    assert excinfo.value.code == "token_revoked"


@pytest.mark.django_db
def test_token_authenticate_refuses_an_expired_token():
    token, plaintext = services.token_issue(
        merchant=MerchantFactory(), expires_at=timezone.now() + timedelta(hours=1)
    )
    ApiToken.objects.filter(pk=token.pk).update(expires_at=timezone.now() - timedelta(seconds=1))

    with pytest.raises(PermissionDenied) as excinfo:
        services.token_authenticate(plaintext=plaintext)

    assert excinfo.value.code == "token_expired"


@pytest.mark.django_db
def test_token_authenticate_accepts_a_token_before_its_expiry():
    merchant = MerchantFactory()
    _, plaintext = services.token_issue(
        merchant=merchant, expires_at=timezone.now() + timedelta(hours=1)
    )

    assert services.token_authenticate(plaintext=plaintext) == merchant


@pytest.mark.django_db
def test_revoking_twice_is_harmless_and_keeps_the_first_revocation_time():
    token, plaintext = services.token_issue(merchant=MerchantFactory())

    first = services.token_revoke(token=token).revoked_at
    second = services.token_revoke(token=token).revoked_at

    assert first is not None
    assert second == first
    assert Event.objects.filter(kind="token.revoked").count() == 1
    with pytest.raises(PermissionDenied):
        services.token_authenticate(plaintext=plaintext)


@pytest.mark.django_db
def test_a_revoked_token_stays_revoked_when_the_merchant_gets_a_new_token():
    merchant = MerchantFactory()
    old, old_plaintext = services.token_issue(merchant=merchant)
    services.token_revoke(token=old)

    _, new_plaintext = services.token_issue(merchant=merchant)

    assert services.token_authenticate(plaintext=new_plaintext) == merchant
    with pytest.raises(PermissionDenied) as excinfo:
        services.token_authenticate(plaintext=old_plaintext)
    assert excinfo.value.code == "token_revoked"


@pytest.mark.django_db
def test_last_used_at_is_refreshed_at_most_once_a_minute(monkeypatch):
    token, plaintext = services.token_issue(merchant=MerchantFactory())
    start = timezone.now()
    clock = SimpleNamespace(now=lambda: start)
    monkeypatch.setattr(services, "timezone", clock)

    def last_used():
        services.token_authenticate(plaintext=plaintext)
        return ApiToken.objects.get(pk=token.pk).last_used_at

    assert last_used() == start
    clock.now = lambda: start + timedelta(seconds=59)
    assert last_used() == start
    clock.now = lambda: start + timedelta(seconds=60)
    assert last_used() == start
    clock.now = lambda: start + timedelta(seconds=61)
    assert last_used() == start + timedelta(seconds=61)
