"""The audit log page: every ``Event``, newest first, filterable, paged by keyset.

``Event`` grows without bound, so the page never counts it and never uses ``OFFSET``: a page is
the 50 events just older (``before``) or just newer (``after``) than a cursor, which is the
``(created_at, id)`` of an event on the page that linked here; both directions use the
``created_at`` index.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from typing import Any

from django import forms
from django.core.exceptions import ValidationError
from django.db.models import Q, QuerySet
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.views.decorators.http import require_GET

from flportal.roles import viewer_required
from rounds.models import Event

EVENTS_PER_PAGE = 50

# Suggestions for the kind filter; any kind (or a family such as "round") can be typed.
KNOWN_KINDS = [
    "merchant.created",
    "merchant.status",
    "merchant.key_registered",
    "token.issued",
    "token.revoked",
    "model.created",
    "model.updated",
    "version.created",
    "round.scheduled",
    "round.opened",
    "round.closed",
    "round.completed",
    "round.failed",
    "round.cancelled",
    "series.cancelled",
    "secagg.phase",
    "secagg.excluded",
    "update.accepted",
    "evaluation.received",
]

ACTOR_TYPES = [("", "anyone"), ("operator", "operators"), ("merchant", "merchants")]
ACTOR_TYPES += [("system", "the system")]


class AuditFilterForm(forms.Form):
    kind = forms.CharField(
        max_length=64, required=False, help_text='An exact kind, or a family such as "round".'
    )
    actor_type = forms.ChoiceField(choices=ACTOR_TYPES, required=False, label="Actor type")
    actor = forms.CharField(
        max_length=100, required=False, help_text="An operator's username or a merchant's slug."
    )
    merchant = forms.SlugField(max_length=64, required=False, help_text="Merchant slug.")
    fl_round = forms.IntegerField(min_value=1, required=False, label="Round id")
    since = forms.DateField(
        required=False, label="From", widget=forms.DateInput(attrs={"type": "date"})
    )
    until = forms.DateField(
        required=False, label="To", widget=forms.DateInput(attrs={"type": "date"})
    )

    def clean(self) -> dict[str, Any]:
        data = super().clean()
        since, until = data.get("since"), data.get("until")
        if since and until and since > until:
            raise ValidationError("The date range ends before it starts.", code="bad_range")
        return data


def _start_of(day: date) -> datetime:
    return datetime.combine(day, time.min, tzinfo=UTC)


def _filtered(events: QuerySet[Event], data: dict[str, Any]) -> QuerySet[Event]:
    """Apply the filters that validated; the form reports the others."""
    kind = data.get("kind", "").strip()
    if kind:
        family = kind.rstrip(".*")
        events = events.filter(Q(kind=kind) | Q(kind__startswith=f"{family}."))
    actor_type = data.get("actor_type")
    if actor_type == "system":
        events = events.exclude(actor_label__startswith="operator:").exclude(
            actor_label__startswith="merchant:"
        )
    elif actor_type:
        events = events.filter(actor_label__startswith=f"{actor_type}:")
    actor = data.get("actor", "").strip()
    if actor:
        events = events.filter(actor_label__in=[actor, f"operator:{actor}", f"merchant:{actor}"])
    if data.get("merchant"):
        events = events.filter(merchant__slug=data["merchant"])
    if data.get("fl_round"):
        events = events.filter(fl_round_id=data["fl_round"])
    if data.get("since"):
        events = events.filter(created_at__gte=_start_of(data["since"]))
    if data.get("until"):
        events = events.filter(created_at__lt=_start_of(data["until"] + timedelta(days=1)))
    return events


def _cursor(event: Event) -> str:
    moment = event.created_at.astimezone(UTC)
    micros = (moment - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(microseconds=1)
    return f"{micros}.{event.pk}"


def _parse_cursor(value: str | None) -> tuple[datetime, int] | None:
    try:
        micros, pk = (int(part) for part in (value or "").split("."))
        return datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=micros), pk
    except (ValueError, OverflowError):
        return None


def _page(events: QuerySet[Event], request: HttpRequest) -> dict[str, Any]:
    before = _parse_cursor(request.GET.get("before"))
    after = None if before else _parse_cursor(request.GET.get("after"))
    if after is not None:
        moment, pk = after
        newer = events.filter(Q(created_at__gt=moment) | Q(created_at=moment, pk__gt=pk))
        rows = list(newer.order_by("created_at", "id")[: EVENTS_PER_PAGE + 1])
        has_newer, has_older = len(rows) > EVENTS_PER_PAGE, True
        rows = rows[:EVENTS_PER_PAGE][::-1]
    else:
        if before is not None:
            moment, pk = before
            events = events.filter(Q(created_at__lt=moment) | Q(created_at=moment, pk__lt=pk))
        rows = list(events.order_by("-created_at", "-id")[: EVENTS_PER_PAGE + 1])
        has_newer, has_older = before is not None, len(rows) > EVENTS_PER_PAGE
        rows = rows[:EVENTS_PER_PAGE]
    return {
        "events": rows,
        "newer": _cursor(rows[0]) if rows and has_newer else None,
        "older": _cursor(rows[-1]) if rows and has_older else None,
        "is_newest": not has_newer,
    }


@viewer_required
@require_GET
def audit_log(request: HttpRequest) -> HttpResponse:
    form = AuditFilterForm(request.GET)
    form.is_valid()  # errors are shown; the filters that validated still apply
    events = Event.objects.select_related("actor", "merchant", "fl_round__fl_model")
    events = _filtered(events, getattr(form, "cleaned_data", {}))
    query = request.GET.copy()
    for key in ("before", "after"):
        query.pop(key, None)
    context = {
        "form": form,
        "filter_query": query.urlencode(),
        "known_kinds": KNOWN_KINDS,
        "filtered": any(v for k, v in request.GET.items() if k not in {"before", "after"}),
    } | _page(events, request)
    return render(request, "audit/event_list.html", context)
