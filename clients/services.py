"""Business rules for merchants and their API tokens."""

from __future__ import annotations

import base64
import binascii
from datetime import datetime, timedelta

from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser
from django.db import IntegrityError, transaction
from django.db.models import Q
from django.utils import timezone
from django.utils.text import slugify

from clients import tokens
from clients.models import ApiToken, Merchant
from clients.sdk.secagg import SecAggError, check_public_key
from flportal.errors import Conflict, NotFound, PermissionDenied, ValidationFailed
from rounds import audit

# Refresh last_used_at at most this often, so authentication does not write on every request.
LAST_USED_GRANULARITY = timedelta(minutes=1)


# Portal paths such as /merchants/new/ and /models/new/ must not be shadowed.
RESERVED_SLUGS = frozenset({"new", "series", "settings"})


def merchant_create(
    *,
    name: str,
    slug: str = "",
    category: str = "",
    region: str = "",
    size_band: str = "",
    contact_email: str = "",
    status: str = Merchant.Status.PENDING,
    actor: AbstractBaseUser | None = None,
) -> Merchant:
    name = name.strip()
    if not name:
        raise ValidationFailed("A merchant needs a name.", code="name_required")
    slug = slugify(slug or name)[:64]
    if not slug:
        raise ValidationFailed("Could not derive a slug from the name.", code="invalid_slug")
    if slug in RESERVED_SLUGS:
        raise ValidationFailed(
            f"{slug!r} is reserved by the portal's URLs; choose another slug.", code="slug_reserved"
        )
    if status not in Merchant.Status.values:
        raise ValidationFailed(f"Unknown status {status!r}.", code="invalid_status")
    if size_band and size_band not in Merchant.SizeBand.values:
        raise ValidationFailed(f"Unknown size band {size_band!r}.", code="invalid_size_band")
    try:
        with transaction.atomic():
            merchant = Merchant.objects.create(
                name=name,
                slug=slug,
                category=category,
                region=region,
                size_band=size_band,
                contact_email=contact_email,
                status=status,
            )
            audit.record(
                kind="merchant.created", actor=actor, merchant=merchant, data={"status": status}
            )
    except IntegrityError:
        raise Conflict(
            f"A merchant with slug {slug!r} already exists.", code="slug_taken"
        ) from None
    return merchant


_ALLOWED_TRANSITIONS = {
    Merchant.Status.PENDING: {Merchant.Status.ACTIVE, Merchant.Status.SUSPENDED},
    Merchant.Status.ACTIVE: {Merchant.Status.SUSPENDED},
    Merchant.Status.SUSPENDED: {Merchant.Status.ACTIVE},
}


@transaction.atomic
def merchant_set_status(
    *, merchant: Merchant, status: str, actor: AbstractBaseUser | None = None
) -> Merchant:
    if status not in Merchant.Status.values:
        raise ValidationFailed(f"Unknown status {status!r}.", code="invalid_status")
    current = Merchant.Status(merchant.status)
    if status == current:
        return merchant
    if status not in _ALLOWED_TRANSITIONS[current]:
        raise Conflict(f"A {current} merchant cannot become {status}.", code="invalid_transition")
    changed = Merchant.objects.filter(pk=merchant.pk, status=current).update(
        status=status, updated_at=timezone.now()
    )
    if changed != 1:
        raise Conflict("The merchant changed meanwhile; reload and retry.", code="stale_merchant")
    merchant.refresh_from_db()
    audit.record(
        kind="merchant.status", actor=actor, merchant=merchant, data={"from": current, "to": status}
    )
    return merchant


def token_issue(
    *,
    merchant: Merchant,
    label: str = "",
    expires_at: datetime | None = None,
    actor: AbstractBaseUser | None = None,
) -> tuple[ApiToken, str]:
    """Create a token and return it with its plaintext, which is never stored or shown again."""
    if expires_at is not None and expires_at <= timezone.now():
        raise ValidationFailed("expires_at must be in the future.", code="invalid_expiry")
    generated = tokens.generate(settings.TOKEN_HASH_KEY)
    with transaction.atomic():
        token = ApiToken.objects.create(
            merchant=merchant,
            label=label[:100],
            prefix=generated.prefix,
            hashed_key=generated.hashed,
            expires_at=expires_at,
            created_by=actor if actor is not None and actor.is_authenticated else None,
        )
        audit.record(
            kind="token.issued",
            actor=actor,
            merchant=merchant,
            data={"token_id": token.pk, "prefix": token.prefix},
        )
    return token, generated.plaintext


@transaction.atomic
def token_revoke(*, token: ApiToken, actor: AbstractBaseUser | None = None) -> ApiToken:
    """Revoke for good; revoking twice is harmless, un-revoking is impossible."""
    now = timezone.now()
    if ApiToken.objects.filter(pk=token.pk, revoked_at__isnull=True).update(revoked_at=now):
        audit.record(
            kind="token.revoked",
            actor=actor,
            merchant=token.merchant,
            data={"token_id": token.pk, "prefix": token.prefix},
        )
    token.refresh_from_db()
    return token


def token_authenticate(*, plaintext: str) -> Merchant:
    """Resolve a bearer token to its merchant, or raise ``PermissionDenied``/``NotFound``."""
    prefix = tokens.parse_prefix(plaintext)
    invalid = PermissionDenied("Invalid API token.", code="invalid_token")
    if prefix is None:
        raise invalid
    token = ApiToken.objects.select_related("merchant").filter(prefix=prefix).first()
    if token is None or not tokens.matches(plaintext, token.hashed_key, settings.TOKEN_HASH_KEY):
        raise invalid
    now = timezone.now()
    if token.is_revoked:
        raise PermissionDenied("This API token has been revoked.", code="token_revoked")
    if token.expires_at is not None and token.expires_at <= now:
        raise PermissionDenied("This API token has expired.", code="token_expired")
    if token.last_used_at is None or now - token.last_used_at > LAST_USED_GRANULARITY:
        ApiToken.objects.filter(pk=token.pk).update(last_used_at=now)
    _merchant_seen(token.merchant, now)
    return token.merchant


def _merchant_seen(merchant: Merchant, now: datetime) -> None:
    """Refresh ``last_seen_at`` at most once per ``LAST_USED_GRANULARITY``, without races: the
    conditional UPDATE lets one of several concurrent requests write, and no write at all
    happens while the value loaded with the token is recent."""
    seen = merchant.last_seen_at
    if seen is not None and now - seen <= LAST_USED_GRANULARITY:
        return
    stale = Q(last_seen_at__isnull=True) | Q(last_seen_at__lt=now - LAST_USED_GRANULARITY)
    if Merchant.objects.filter(stale, pk=merchant.pk).update(last_seen_at=now):
        merchant.last_seen_at = now


def merchant_get(*, slug: str) -> Merchant:
    merchant = Merchant.objects.filter(slug=slug).first()
    if merchant is None:
        raise NotFound(f"No merchant {slug!r}.", code="merchant_not_found")
    return merchant


def merchant_register_key(*, merchant: Merchant, public_key: str) -> Merchant:
    """Register the merchant's long-term X25519 public key (base64 of 32 bytes), used to seal
    the secure-aggregation shares other merchants send it. Rounds opened later use it."""
    try:
        raw = base64.b64decode(public_key or "", validate=True)
        check_public_key(raw)
    except (binascii.Error, ValueError, SecAggError):
        raise ValidationFailed(
            "public_key must be the base64 of a 32-byte X25519 public key.",
            code="invalid_public_key",
        ) from None
    encoded = base64.b64encode(raw).decode()
    if merchant.public_key == encoded:
        return merchant
    Merchant.objects.filter(pk=merchant.pk).update(public_key=encoded, updated_at=timezone.now())
    merchant.refresh_from_db()
    audit.record(kind="merchant.key_registered", merchant=merchant, data={"public_key": encoded})
    return merchant
