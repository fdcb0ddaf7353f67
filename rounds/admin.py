from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest

from flportal.errors import DomainError
from rounds import services
from rounds.models import Event, FederatedModel, ModelVersion, Round, Update
from rounds.services.fl_models import parse_training_hints


class FederatedModelForm(forms.ModelForm):
    """The strategy, its parameters and the hints, validated by the same rules as the API."""

    class Meta:
        model = FederatedModel
        fields = ["name", "description", "strategy", "strategy_params", "training_hints"]

    def clean(self) -> dict[str, Any]:
        data = super().clean()
        try:
            data["strategy_params"] = services.parse_strategy(
                data.get("strategy", ""), data.get("strategy_params") or {}
            )
        except DomainError as exc:
            self.add_error("strategy_params", f"{exc.code}: {exc.detail}")
        try:
            data["training_hints"] = parse_training_hints(data.get("training_hints") or {})
        except DomainError as exc:
            self.add_error("training_hints", f"{exc.code}: {exc.detail}")
        return data


@admin.register(FederatedModel)
class FederatedModelAdmin(admin.ModelAdmin):
    form = FederatedModelForm
    list_display = ["name", "slug", "strategy", "created_at"]
    readonly_fields = ["slug", "tensors", "created_at", "created_by"]
    search_fields = ["name", "slug"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False  # defined through the operator API, which creates the initial version

    def save_model(
        self, request: HttpRequest, obj: FederatedModel, form: Any, change: bool
    ) -> None:
        data = form.cleaned_data
        FederatedModel.objects.filter(pk=obj.pk).update(name=data["name"])
        services.fl_model_update(
            fl_model=FederatedModel.objects.get(pk=obj.pk),
            strategy=data["strategy"],
            strategy_params=data["strategy_params"],
            training_hints=data["training_hints"],
            description=data["description"],
            actor=request.user,
        )


@admin.register(ModelVersion)
class ModelVersionAdmin(admin.ModelAdmin):
    list_display = [
        "fl_model",
        "number",
        "strategy",
        "sha256",
        "size_bytes",
        "produced_by",
        "created_at",
    ]
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
        "strategy",
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
