"""OpenAPI description of merchant token authentication (loaded by the app config)."""

from __future__ import annotations

from typing import Any

from drf_spectacular.extensions import OpenApiAuthenticationExtension


class MerchantTokenScheme(OpenApiAuthenticationExtension):
    target_class = "clients.authentication.MerchantTokenAuthentication"
    name = "merchantToken"

    def get_security_definition(self, auto_schema: Any) -> dict[str, str]:
        return {"type": "http", "scheme": "bearer", "bearerFormat": "flp_<prefix>_<secret>"}
