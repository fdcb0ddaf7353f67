"""Server-rendered operator pages. The live parts patch the DOM from the WebSocket feed."""

from __future__ import annotations

from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import render

from flportal.roles import viewer_required
from rounds import services
from rounds.aggregation import LABELS
from rounds.models import Round


@viewer_required
def round_list(request: HttpRequest) -> HttpResponse:
    rounds = Round.objects.select_related("fl_model", "result_version").order_by("-created_at")[
        :100
    ]
    return render(request, "rounds/round_list.html", {"rounds": rounds})


@viewer_required
def round_detail(request: HttpRequest, round_id: int) -> HttpResponse:
    fl_round = Round.objects.select_related("fl_model", "base_version").filter(pk=round_id).first()
    if fl_round is None:
        raise Http404("No such round")
    snapshot = services.round_snapshot(fl_round)
    context = {
        "fl_round": fl_round,
        "snapshot": snapshot,
        "strategy_label": LABELS.get(snapshot["strategy"], snapshot["strategy"]),
        "aggregation_text": " · ".join(
            f"{key}: {', '.join(map(str, value)) if isinstance(value, list) else value}"
            for key, value in snapshot["aggregation"].items()
        ),
    }
    return render(request, "rounds/round_detail.html", context)
