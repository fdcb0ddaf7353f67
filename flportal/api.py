"""Base views for the two API audiences: merchants (bearer token) and operators (staff session)."""

from __future__ import annotations

from typing import Any

from rest_framework.authentication import SessionAuthentication
from rest_framework.permissions import BasePermission, IsAdminUser
from rest_framework.request import Request
from rest_framework.views import APIView

from clients.authentication import MerchantPrincipal, MerchantTokenAuthentication


class IsActiveMerchant(BasePermission):
    message = "This endpoint is for active merchants."
    code = "merchant_inactive"

    def has_permission(self, request: Request, view: Any) -> bool:
        principal = request.user
        if not isinstance(principal, MerchantPrincipal):
            self.message, self.code = "A merchant API token is required.", "not_a_merchant"
            return False
        if not principal.merchant.is_active:
            self.message = f"Merchant is {principal.merchant.status}."
            self.code = "merchant_inactive"
            return False
        return True


class IsOperator(IsAdminUser):
    message = "Operators only: log in with a staff account."
    code = "not_an_operator"


class MerchantApiView(APIView):
    authentication_classes = [MerchantTokenAuthentication]
    permission_classes = [IsActiveMerchant]

    @property
    def merchant(self) -> Any:
        return self.request.user.merchant


class OperatorApiView(APIView):
    authentication_classes = [SessionAuthentication]
    permission_classes = [IsOperator]
