"""The dashboard home and the chart series it refetches when a round finishes."""

from __future__ import annotations

from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import render

from flportal.errors import error_body
from flportal.roles import viewer_required
from rounds.models import FederatedModel
from rounds.services.dashboard import CHART_METRICS, dashboard_overview, model_series

NOSCRIPT_ROUNDS = 10  # rounds per model in the table shown instead of charts without JavaScript


@viewer_required
def dashboard(request: HttpRequest) -> HttpResponse:
    overview = dashboard_overview()
    charts = [
        {"fl_model": fl_model, "series": model_series(fl_model=fl_model)}
        for fl_model in overview["models"]
    ]
    context = {
        **overview,
        "charts": charts,
        "series": {chart["fl_model"].slug: chart["series"] for chart in charts},
        "tables": [
            {"fl_model": chart["fl_model"], "rows": _recent_rows(chart["series"])}
            for chart in charts
        ],
    }
    return render(request, "dashboard.html", context)


@viewer_required
def series(request: HttpRequest, model_id: int) -> HttpResponse:
    fl_model = FederatedModel.objects.filter(pk=model_id).first()
    if fl_model is None:
        return JsonResponse(error_body("model_not_found", f"No model {model_id}."), status=404)
    response = JsonResponse(model_series(fl_model=fl_model))
    response["Cache-Control"] = "private, no-cache"
    return response


def _recent_rows(series: dict) -> list[dict]:
    """The last few rounds of a series as table rows (newest first)."""
    keys = ["rounds", "status", "version", "invited", "submitted", "norm_mean", "norm_max"]
    keys += [f"{kind}_{metric}" for kind in ("train", "eval") for metric in CHART_METRICS]
    columns = [series[key] for key in keys]
    rows = [dict(zip(keys, values, strict=True)) for values in zip(*columns, strict=True)]
    return rows[::-1][:NOSCRIPT_ROUNDS]
