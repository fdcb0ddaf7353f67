from __future__ import annotations

from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest

from clients import services
from clients.models import ApiToken, Merchant
from flportal.errors import Conflict


@admin.register(Merchant)
class MerchantAdmin(admin.ModelAdmin):
    list_display = ["name", "slug", "status", "category", "region", "size_band", "created_at"]
    list_filter = ["status", "category", "region", "size_band"]
    search_fields = ["name", "slug"]
    readonly_fields = ["status", "created_at", "updated_at"]
    prepopulated_fields = {"slug": ["name"]}
    actions = ["approve", "suspend", "issue_token"]

    @admin.action(description="Approve / reactivate selected merchants")
    def approve(self, request: HttpRequest, queryset: QuerySet[Merchant]) -> None:
        self._set_status(request, queryset, Merchant.Status.ACTIVE)

    @admin.action(description="Suspend selected merchants")
    def suspend(self, request: HttpRequest, queryset: QuerySet[Merchant]) -> None:
        self._set_status(request, queryset, Merchant.Status.SUSPENDED)

    @admin.action(description="Issue an API token (shown once)")
    def issue_token(self, request: HttpRequest, queryset: QuerySet[Merchant]) -> None:
        for merchant in queryset:
            _, plaintext = services.token_issue(
                merchant=merchant, label="admin", actor=request.user
            )
            self.message_user(
                request,
                f"Token for {merchant.slug} (copy it now, it is not stored): {plaintext}",
                messages.WARNING,
            )

    def _set_status(self, request: HttpRequest, queryset: QuerySet[Merchant], status: str) -> None:
        for merchant in queryset:
            try:
                services.merchant_set_status(merchant=merchant, status=status, actor=request.user)
            except Conflict as exc:
                self.message_user(request, f"{merchant.slug}: {exc.detail}", messages.ERROR)


@admin.register(ApiToken)
class ApiTokenAdmin(admin.ModelAdmin):
    list_display = [
        "prefix",
        "merchant",
        "label",
        "created_at",
        "expires_at",
        "revoked_at",
        "last_used_at",
    ]
    list_filter = ["revoked_at"]
    search_fields = ["prefix", "merchant__slug", "label"]
    readonly_fields = [
        "merchant",
        "prefix",
        "created_at",
        "created_by",
        "revoked_at",
        "last_used_at",
    ]
    actions = ["revoke"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False  # tokens are issued through the merchant action, which shows them once

    @admin.action(description="Revoke selected tokens (cannot be undone)")
    def revoke(self, request: HttpRequest, queryset: QuerySet[ApiToken]) -> None:
        for token in queryset:
            services.token_revoke(token=token, actor=request.user)
