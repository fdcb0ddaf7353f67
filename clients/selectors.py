"""Read-side queries for the merchant pages (the HackSoft styleguide's "selectors"): filtering,
sorting and paging merchants with their participation statistics, and a merchant's history.
Business rules that change state live in ``clients.services``."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from django.core.paginator import Page, Paginator
from django.db.models import Count, F, FloatField, OrderBy, OuterRef, Q, QuerySet, Subquery
from django.db.models.functions import Cast, Coalesce, NullIf
from django.utils import timezone

from clients.models import Merchant
from rounds.models import Round, Update

MERCHANTS_PER_PAGE = 50
HISTORY_PER_PAGE = 25

Participation = Round.participants.through

# Column key -> the expression the list orders by (ties broken by name, then id).
_SORTS: dict[str, str] = {
    "name": "name",
    "status": "status",
    "category": "category",
    "region": "region",
    "created": "created_at",
    "last_seen": "last_seen_at",
    "rounds": "rounds_joined",
    "acceptance": "acceptance_rate",
}
STAT_SORTS = {"rounds", "acceptance"}
SEEN_WINDOWS = {"1h": timedelta(hours=1), "1d": timedelta(days=1), "7d": timedelta(days=7)}

# --- participation statistics -------------------------------------------------------------------


def _count_per_merchant(rows: QuerySet) -> Coalesce:
    counted = rows.filter(merchant_id=OuterRef("pk")).order_by().values("merchant_id")
    return Coalesce(Subquery(counted.annotate(n=Count("pk")).values("n")[:1]), 0)


def with_participation(merchants: QuerySet[Merchant]) -> QuerySet[Merchant]:
    """Annotate rounds joined (invited), accepted updates and their ratio, one subquery each."""
    accepted = Update.objects.filter(status=Update.Status.ACCEPTED)
    return merchants.annotate(
        rounds_joined=_count_per_merchant(Participation.objects.all()),
        accepted_updates=_count_per_merchant(accepted),
    ).annotate(
        acceptance_rate=Cast("accepted_updates", FloatField())
        / NullIf(Cast("rounds_joined", FloatField()), 0.0)
    )


def _ordering(sort: str) -> list[OrderBy | str]:
    key = sort.lstrip("-")
    field = F(_SORTS.get(key, "name"))
    first = field.desc(nulls_last=True) if sort.startswith("-") else field.asc(nulls_last=True)
    return [first, "name", "pk"]


def merchant_page(merchants: QuerySet[Merchant], sort: str, number: Any) -> Page:
    """One page of merchants with their statistics, computed for that page only.

    The page's ids come from one ordered ``LIMIT`` query (plus a ``COUNT`` for the navigation);
    the statistics subqueries then run for those 50 rows, not for every merchant. Only sorting
    by a statistic has to compute it for every merchant that matches the filters.
    """
    if sort.lstrip("-") in STAT_SORTS:
        merchants = with_participation(merchants)
    ids = merchants.order_by(*_ordering(sort)).values_list("pk", flat=True)
    page = Paginator(ids, MERCHANTS_PER_PAGE).get_page(number)
    page_ids = list(page.object_list)
    rows = with_participation(Merchant.objects.filter(pk__in=page_ids)).in_bulk()
    page.object_list = [rows[pk] for pk in page_ids]
    return page


def merchants_filtered(merchants: QuerySet[Merchant], data: dict[str, Any]) -> QuerySet[Merchant]:
    if data["q"].strip():
        term = data["q"].strip()
        merchants = merchants.filter(
            Q(name__icontains=term) | Q(slug__icontains=term) | Q(contact_email__icontains=term)
        )
    for field in ("status", "category", "region"):
        if data[field]:
            merchants = merchants.filter(**{field: data[field]})
    seen = data.get("seen")
    if seen == "never":
        merchants = merchants.filter(last_seen_at__isnull=True)
    elif seen:
        merchants = merchants.filter(last_seen_at__gte=timezone.now() - SEEN_WINDOWS[seen])
    if data.get("min_rounds") is not None or data.get("min_acceptance") is not None:
        merchants = with_participation(merchants)  # like sorting by a statistic: every match
        if data.get("min_rounds") is not None:
            merchants = merchants.filter(rounds_joined__gte=data["min_rounds"])
        if data.get("min_acceptance") is not None:
            merchants = merchants.filter(acceptance_rate__gte=data["min_acceptance"] / 100)
    return merchants


def merchant_history(merchant: Merchant, number: Any) -> Page:
    """The rounds the merchant was invited to, newest first, each with its update (or none)."""
    rounds = (
        Round.objects.filter(participants=merchant)
        .select_related("fl_model")
        .order_by("-created_at", "-id")
    )
    page = Paginator(rounds, HISTORY_PER_PAGE).get_page(number)
    fl_rounds = list(page.object_list)
    updates = {
        u.fl_round_id: u
        for u in Update.objects.filter(merchant=merchant, fl_round__in=[r.pk for r in fl_rounds])
    }
    rows = []
    for fl_round in fl_rounds:
        update = updates.get(fl_round.pk)
        if update is not None:
            outcome = update.status
        elif fl_round.status in (Round.Status.SCHEDULED, Round.Status.OPEN):
            outcome = "invited"
        else:
            outcome = "dropped"
        rows.append({"fl_round": fl_round, "update": update, "outcome": outcome})
    page.object_list = rows
    return page


def distinct_values(field: str) -> list[str]:
    """The non-empty values of a merchant attribute, for the filter choices."""
    values = Merchant.objects.exclude(**{field: ""}).order_by(field).values_list(field, flat=True)
    return list(values.distinct())
