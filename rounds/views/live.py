"""The round list and the live round page. Both are complete without JavaScript (the live page
then refreshes itself while the round runs); with it, they patch the DOM from the WebSocket
feeds in ``rounds.consumers``."""

from __future__ import annotations

from typing import Any

from django import forms
from django.core.paginator import Paginator
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import render

from flportal.roles import viewer_required
from rounds.aggregation import LABELS
from rounds.models import FederatedModel, Round
from rounds.services import live
from rounds.services.dashboard import submitted_count

ROUNDS_PER_PAGE = 50
STATUS_CHOICES = [("", "Any status"), *Round.Status.choices]


class RoundFilterForm(forms.Form):
    model = forms.ModelChoiceField(
        queryset=FederatedModel.objects.order_by("name"),
        to_field_name="slug",
        required=False,
        empty_label="Any model",
    )
    status = forms.ChoiceField(choices=STATUS_CHOICES, required=False)


@viewer_required
def round_list(request: HttpRequest) -> HttpResponse:
    form = RoundFilterForm(request.GET or None)
    rounds = Round.objects.select_related("fl_model", "result_version")
    if form.is_bound and form.is_valid():
        if form.cleaned_data["model"]:
            rounds = rounds.filter(fl_model=form.cleaned_data["model"])
        if form.cleaned_data["status"]:
            rounds = rounds.filter(status=form.cleaned_data["status"])
    rounds = rounds.annotate(submitted=submitted_count()).order_by("-created_at", "-pk")
    page = Paginator(rounds, ROUNDS_PER_PAGE).get_page(request.GET.get("page"))
    query = request.GET.copy()
    query.pop("page", None)
    context = {"form": form, "page": page, "rounds": page.object_list, "query": query.urlencode()}
    return render(request, "rounds/round_list.html", context)


@viewer_required
def round_detail(request: HttpRequest, round_id: int) -> HttpResponse:
    fl_round = Round.objects.select_related("fl_model", "base_version").filter(pk=round_id).first()
    if fl_round is None:
        raise Http404("No such round")
    state = live.round_live(fl_round)
    snapshot = state["round"]
    context = {
        "fl_round": fl_round,
        "state": state,
        "snapshot": snapshot,
        "strategy_label": LABELS.get(snapshot["strategy"], snapshot["strategy"]),
        "quorum_percent": _percent(snapshot["min_updates"], snapshot["target_updates"]),
        "progress_percent": _percent(snapshot["submitted"], snapshot["target_updates"]),
        "result_aggregation": _aggregation_items((state["result"] or {}).get("aggregation", {})),
        "result_metrics": _metric_rows(state["result"]),
        "shown_all": len(state["merchants"]) >= snapshot["participants"],
        "shown_limit": live.PARTICIPANTS_SHOWN,
    }
    return render(request, "rounds/round_detail.html", context)


def _percent(value: int, whole: int) -> float:
    return round(min(100.0, 100.0 * value / whole), 2) if whole else 0.0


def _metric_rows(result: dict[str, Any] | None) -> list[tuple[str, str | None, str | None]]:
    """(metric, training value, held-out value) for the completed round's version."""
    if not result:
        return []
    trained = {k: v for k, v in result["metrics"].items() if k != "num_examples"}
    held_out = result["evaluation"]["metrics"]
    return [
        (key, _number(trained.get(key)), _number(held_out.get(key)))
        for key in sorted(set(trained) | set(held_out))
    ]


def _number(value: Any) -> str | None:
    return f"{value:.4f}" if isinstance(value, int | float) else None


def _aggregation_items(info: dict[str, Any]) -> list[tuple[str, str]]:
    """What the strategy did, as label/value pairs (lists are joined)."""
    return [(key.replace("_", " "), _value(value)) for key, value in info.items()]


def _value(value: Any) -> str:
    if isinstance(value, list):
        return ", ".join(map(_value, value))
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)
