"""DRF authentication for merchants: ``Authorization: Bearer flp_…``."""

from __future__ import annotations

from typing import Any

from rest_framework import authentication, exceptions
from rest_framework.request import Request

from clients import services
from clients.models import Merchant
from flportal.errors import PermissionDenied


class MerchantPrincipal:
    """What ``request.user`` is for a merchant client: authenticated, never staff."""

    is_authenticated = True
    is_anonymous = False
    is_staff = False
    is_superuser = False

    def __init__(self, merchant: Merchant) -> None:
        self.merchant = merchant
        self.pk = f"merchant:{merchant.pk}"  # throttling identity, distinct from user ids

    def __str__(self) -> str:
        return f"merchant {self.merchant.slug}"


class MerchantTokenAuthentication(authentication.BaseAuthentication):
    keyword = "Bearer"

    def authenticate(self, request: Request) -> tuple[MerchantPrincipal, Any] | None:
        header = authentication.get_authorization_header(request).split()
        if not header or header[0].lower() != self.keyword.lower().encode():
            return None
        if len(header) != 2:
            raise exceptions.AuthenticationFailed(
                "Authorization header must be 'Bearer <token>'.", code="invalid_token"
            )
        try:
            plaintext = header[1].decode("ascii")
            merchant = services.token_authenticate(plaintext=plaintext)
        except (UnicodeDecodeError, PermissionDenied) as exc:
            code = getattr(exc, "code", "invalid_token")
            raise exceptions.AuthenticationFailed(
                getattr(exc, "detail", str(exc)), code=code
            ) from None
        return MerchantPrincipal(merchant), None

    def authenticate_header(self, request: Request) -> str:
        return self.keyword
