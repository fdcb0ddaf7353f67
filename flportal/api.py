"""Base views for the two API audiences: merchants (bearer token) and operators (staff session)."""

from __future__ import annotations

from typing import Any

from rest_framework.authentication import SessionAuthentication
from rest_framework.permissions import BasePermission
from rest_framework.request import Request
from rest_framework.views import APIView

from clients.authentication import MerchantPrincipal, MerchantTokenAuthentication
from flportal.roles import can_view, is_operator


class IsMerchant(BasePermission):
    """Any merchant with a valid token, whatever its status (it may read its own record)."""

    def has_permission(self, request: Request, view: Any) -> bool:
        return isinstance(request.user, MerchantPrincipal)


class IsActiveMerchant(IsMerchant):
    message = "This merchant is not active."
    code = "merchant_inactive"

    def has_permission(self, request: Request, view: Any) -> bool:
        if not super().has_permission(request, view):
            return False
        merchant = request.user.merchant
        self.message = f"Merchant is {merchant.status}."  # instances are per request
        return bool(merchant.is_active)


class IsOperator(BasePermission):
    """Operators act through the whole API; viewers may only read (GET, HEAD, OPTIONS)."""

    message = "Operators only: log in with an operator account."
    code = "not_an_operator"

    def has_permission(self, request: Request, view: Any) -> bool:
        if request.method in ("GET", "HEAD", "OPTIONS"):
            return can_view(request.user)
        return is_operator(request.user)


class MerchantApiView(APIView):
    authentication_classes = [MerchantTokenAuthentication]
    permission_classes = [IsActiveMerchant]

    @property
    def merchant(self) -> Any:
        return self.request.user.merchant


class OperatorApiView(APIView):
    authentication_classes = [SessionAuthentication]
    permission_classes = [IsOperator]
