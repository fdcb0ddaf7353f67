from __future__ import annotations

from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest

from flportal.errors import DomainError
from rounds import services
from rounds.models import Event, FederatedModel, ModelVersion, Round, Update


@admin.register(FederatedModel)
class FederatedModelAdmin(admin.ModelAdmin):
    list_display = ["name", "slug", "strategy", "created_at"]
    readonly_fields = ["tensors", "created_at", "created_by"]
    search_fields = ["name", "slug"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False  # defined through the operator API, which creates the initial version


@admin.register(ModelVersion)
class ModelVersionAdmin(admin.ModelAdmin):
    list_display = ["fl_model", "number", "sha256", "size_bytes", "produced_by", "created_at"]
    list_filter = ["fl_model"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False  # versions are immutable


@admin.register(Round)
class RoundAdmin(admin.ModelAdmin):
    list_display = [
        "fl_model",
        "number",
        "status",
        "min_updates",
        "target_updates",
        "opens_at",
        "deadline_at",
    ]
    list_filter = ["status", "fl_model"]
    readonly_fields = [f.name for f in Round._meta.fields] + ["participants"]
    actions = ["close", "cancel"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    @admin.action(description="Close selected open rounds and aggregate")
    def close(self, request: HttpRequest, queryset: QuerySet[Round]) -> None:
        for fl_round in queryset:
            self._apply(request, fl_round, services.round_close)

    @admin.action(description="Cancel selected rounds")
    def cancel(self, request: HttpRequest, queryset: QuerySet[Round]) -> None:
        for fl_round in queryset:
            self._apply(request, fl_round, services.round_cancel)

    def _apply(self, request: HttpRequest, fl_round: Round, action) -> None:  # type: ignore[no-untyped-def]
        try:
            action(fl_round=fl_round, actor=request.user)
        except DomainError as exc:
            self.message_user(request, f"{fl_round}: {exc.detail}", messages.ERROR)


@admin.register(Update)
class UpdateAdmin(admin.ModelAdmin):
    list_display = ["fl_round", "merchant", "status", "num_examples", "created_at"]
    list_filter = ["status"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False


@admin.register(Event)
class EventAdmin(admin.ModelAdmin):
    list_display = ["created_at", "kind", "actor_label", "fl_round", "merchant"]
    list_filter = ["kind"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False
