"""Portal pages for scheduling rounds: the schedule form (now, at a time, or a series; quorum,
target, duration; participant selection), a series page, and cancelling a round or a series."""

from __future__ import annotations

import uuid

from django.contrib import messages
from django.db.models import Count
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.utils.http import url_has_allowed_host_and_scheme
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from clients.models import Merchant
from flportal.errors import DomainError, NotFound
from flportal.roles import is_operator, operator_required, viewer_required
from rounds import services
from rounds.forms import ScheduleRoundForm
from rounds.models import FederatedModel, Round
from rounds.services.selection import describe


def _cohort_stats() -> list[dict[str, object]]:
    """Active merchants counted per (category, region, size band): what the page's script needs
    to preview how many a selection would invite, without listing any merchant."""
    return list(
        Merchant.objects.filter(status=Merchant.Status.ACTIVE)
        .values("category", "region", "size_band")
        .annotate(n=Count("pk"))
        .order_by("category", "region", "size_band")
    )


@operator_required
@require_http_methods(["GET", "POST"])
def round_new(request: HttpRequest) -> HttpResponse:
    if request.method == "POST":
        form = ScheduleRoundForm(request.POST)
    else:
        slug = request.GET.get("model", "")
        form = ScheduleRoundForm(initial={"model": slug} if slug else None)
    if request.method == "POST" and form.is_valid():
        try:
            created = services.rounds_schedule(actor=request.user, **form.schedule())
        except DomainError as exc:
            field = ScheduleRoundForm.ERROR_FIELDS.get(exc.code)
            form.add_error(field, exc.detail)
        else:
            return _scheduled(request, created)
    context = {
        "form": form,
        "cohort_stats": _cohort_stats(),
        "has_models": FederatedModel.objects.exists(),
    }
    status = 400 if request.method == "POST" else 200
    return render(request, "rounds/round_new.html", context, status=status)


def _scheduled(request: HttpRequest, created: list[Round]) -> HttpResponse:
    first = created[0]
    if first.series:
        messages.success(
            request,
            f"Scheduled a series of {len(created)} rounds of {first.fl_model.name} "
            f"(rounds #{first.number}-#{created[-1].number}).",
        )
        return redirect("rounds:series-detail", series=first.series)
    if first.status == Round.Status.OPEN:
        messages.success(
            request,
            f"Round #{first.number} is open; {first.participants.count()} merchants invited.",
        )
    elif first.status == Round.Status.FAILED:
        messages.error(request, f"Round #{first.number} failed to open: {first.failure_reason}")
    else:
        messages.success(
            request,
            f"Round #{first.number} is {first.get_status_display().lower()} to open at "
            f"{first.opens_at:%Y-%m-%d %H:%M} UTC.",
        )
    return redirect("rounds:round-detail", round_id=first.pk)


def _back(request: HttpRequest, fallback: str, **kwargs: object) -> HttpResponse:
    target = request.POST.get("next", "")
    if target and url_has_allowed_host_and_scheme(
        target, allowed_hosts={request.get_host()}, require_https=request.is_secure()
    ):
        return redirect(target)
    return redirect(fallback, **kwargs)


@operator_required
@require_POST
def round_cancel(request: HttpRequest, round_id: int) -> HttpResponse:
    fl_round = Round.objects.select_related("fl_model").filter(pk=round_id).first()
    if fl_round is None:
        raise Http404("No such round.")
    try:
        services.round_cancel(fl_round=fl_round, actor=request.user)
    except DomainError as exc:
        messages.error(request, f"Round #{fl_round.number} was not cancelled: {exc.detail}")
    else:
        messages.success(request, f"Cancelled round #{fl_round.number} of {fl_round.fl_model}.")
    return _back(request, "rounds:round-detail", round_id=fl_round.pk)


@viewer_required
@require_GET
def series_detail(request: HttpRequest, series: uuid.UUID) -> HttpResponse:
    try:
        rounds = services.series_rounds(series=series)
    except NotFound:
        raise Http404("No such series.") from None
    context = {
        "series": series,
        "rounds": rounds,
        "fl_model": rounds[0].fl_model,
        "selection": describe(rounds[0].selection),
        "pending": sum(r.status in ("scheduled", "open") for r in rounds),
        "can_act": is_operator(request.user),
    }
    return render(request, "rounds/series_detail.html", context)


@operator_required
@require_POST
def series_cancel(request: HttpRequest, series: uuid.UUID) -> HttpResponse:
    try:
        cancelled = services.round_series_cancel(series=series, actor=request.user)
    except NotFound:
        raise Http404("No such series.") from None
    except DomainError as exc:
        messages.error(request, f"Nothing was cancelled: {exc.detail}")
    else:
        messages.success(request, f"Cancelled {len(cancelled)} rounds of the series.")
    return _back(request, "rounds:series-detail", series=series)
