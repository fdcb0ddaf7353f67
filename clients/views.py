"""Portal pages for merchants and their tokens. Read with ``viewer_required``, act with
``operator_required``; every action calls a ``clients.services`` function."""

from __future__ import annotations

from typing import Any

from django.contrib import messages
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from clients import services
from clients.forms import MerchantCreateForm, MerchantFilterForm, MerchantStatusForm, TokenIssueForm
from clients.models import ApiToken, Merchant
from clients.selectors import (
    STAT_SORTS,
    distinct_values,
    merchant_history,
    merchant_page,
    merchants_filtered,
    with_participation,
)
from flportal.errors import DomainError
from flportal.roles import is_operator, operator_required, viewer_required

# What an operator may do from each status, as (button id, label, target status).
_STATUS_ACTIONS: dict[str, list[tuple[str, str, str]]] = {
    Merchant.Status.PENDING: [
        ("approve", "Approve", Merchant.Status.ACTIVE),
        ("suspend", "Suspend", Merchant.Status.SUSPENDED),
    ],
    Merchant.Status.ACTIVE: [("suspend", "Suspend", Merchant.Status.SUSPENDED)],
    Merchant.Status.SUSPENDED: [("reactivate", "Reactivate", Merchant.Status.ACTIVE)],
}


def _query_without(request: HttpRequest, *keys: str, **values: Any) -> str:
    query = request.GET.copy()
    for key in keys:
        query.pop(key, None)
    for key, value in values.items():
        query[key] = value
    return query.urlencode()


# --- pages ----------------------------------------------------------------------------------------


@viewer_required
@require_GET
def merchant_list(request: HttpRequest) -> HttpResponse:
    form = MerchantFilterForm(
        request.GET, categories=distinct_values("category"), regions=distinct_values("region")
    )
    merchants = Merchant.objects.all()
    sort = "name"
    if form.is_valid():
        merchants = merchants_filtered(merchants, form.cleaned_data)
        sort = form.cleaned_data["sort"] or "name"
    page = merchant_page(merchants, sort, request.GET.get("page"))
    columns = []
    for key, label in [
        ("name", "Merchant"),
        ("status", "Status"),
        ("category", "Category"),
        ("region", "Region"),
        ("last_seen", "Last seen"),
        ("rounds", "Rounds joined"),
        ("acceptance", "Acceptance rate"),
    ]:
        current = sort.lstrip("-") == key
        descending = sort.startswith("-")
        target = key if not current or descending else f"-{key}"
        columns.append(
            {
                "key": key,
                "label": label,
                "query": _query_without(request, "page", sort=target),
                "direction": ("descending" if descending else "ascending") if current else "",
                "arrow": ("\u25bc" if descending else "\u25b2") if current else "",
                "numeric": key in STAT_SORTS,
            }
        )
    context = {
        "form": form,
        "page": page,
        "columns": columns,
        "page_query": _query_without(request, "page"),
        "can_act": is_operator(request.user),
    }
    return render(request, "clients/merchant_list.html", context)


@operator_required
@require_http_methods(["GET", "POST"])
def merchant_create(request: HttpRequest) -> HttpResponse:
    form = MerchantCreateForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        data = form.cleaned_data
        try:
            merchant = services.merchant_create(
                name=data["name"],
                slug=data["slug"],
                category=data["category"].strip(),
                region=data["region"].strip(),
                size_band=data["size_band"],
                contact_email=data["contact_email"],
                status=Merchant.Status.ACTIVE if data["approve"] else Merchant.Status.PENDING,
                actor=request.user,
            )
        except DomainError as exc:
            form.add_error(
                "slug" if exc.code in {"slug_taken", "invalid_slug"} else None, exc.detail
            )
        else:
            messages.success(
                request, f"Registered {merchant.name} ({merchant.get_status_display()})."
            )
            return redirect("clients:merchant-detail", slug=merchant.slug)
    status = 400 if request.method == "POST" else 200
    return render(request, "clients/merchant_form.html", {"form": form}, status=status)


def _merchant_or_404(slug: str) -> Merchant:
    merchant = Merchant.objects.filter(slug=slug).first()
    if merchant is None:
        raise Http404("No such merchant")
    return merchant


def _detail_context(request: HttpRequest, merchant: Merchant, **extra: Any) -> dict[str, Any]:
    stats = with_participation(Merchant.objects.filter(pk=merchant.pk)).values(
        "rounds_joined", "accepted_updates", "acceptance_rate"
    )[0]
    context = {
        "merchant": merchant,
        "stats": stats,
        "tokens": merchant.tokens.select_related("created_by"),
        "history": merchant_history(merchant, request.GET.get("page")),
        "can_act": is_operator(request.user),
        "status_actions": _STATUS_ACTIONS[Merchant.Status(merchant.status)],
        "token_form": TokenIssueForm(),
    }
    return context | extra


@viewer_required
@require_GET
def merchant_detail(request: HttpRequest, slug: str) -> HttpResponse:
    merchant = _merchant_or_404(slug)
    return render(request, "clients/merchant_detail.html", _detail_context(request, merchant))


@operator_required
@require_POST
def merchant_status(request: HttpRequest, slug: str) -> HttpResponse:
    merchant = _merchant_or_404(slug)
    form = MerchantStatusForm(request.POST)
    if not form.is_valid():
        messages.error(request, "Choose a valid status: pending, active or suspended.")
    else:
        try:
            merchant = services.merchant_set_status(
                merchant=merchant, status=form.cleaned_data["status"], actor=request.user
            )
        except DomainError as exc:
            messages.error(request, f"Nothing changed: {exc.detail}")
        else:
            messages.success(request, f"{merchant.name} is now {merchant.get_status_display()}.")
    return redirect("clients:merchant-detail", slug=merchant.slug)


@never_cache
@operator_required
@require_POST
def token_issue(request: HttpRequest, slug: str) -> HttpResponse:
    """Issue a token and show its plaintext in this response only; it is never stored."""
    merchant = _merchant_or_404(slug)
    form = TokenIssueForm(request.POST)
    if form.is_valid():
        try:
            token, plaintext = services.token_issue(
                merchant=merchant,
                label=form.cleaned_data["label"].strip(),
                expires_at=form.cleaned_data["expires_at"],
                actor=request.user,
            )
        except DomainError as exc:
            form.add_error("expires_at" if exc.code == "invalid_expiry" else None, exc.detail)
        else:
            context = {"merchant": merchant, "token": token, "plaintext": plaintext}
            return render(request, "clients/token_issued.html", context)
    context = _detail_context(request, merchant, token_form=form)
    return render(request, "clients/merchant_detail.html", context, status=400)


@operator_required
@require_POST
def token_revoke(request: HttpRequest, slug: str, token_id: int) -> HttpResponse:
    merchant = _merchant_or_404(slug)
    token = ApiToken.objects.filter(pk=token_id, merchant=merchant).first()
    if token is None:
        raise Http404("No such token")
    was_revoked = token.is_revoked
    services.token_revoke(token=token, actor=request.user)
    if was_revoked:
        messages.info(request, f"Token {token.prefix} was already revoked.")
    else:
        messages.success(request, f"Token {token.prefix} revoked; it can no longer be used.")
    return redirect("clients:merchant-detail", slug=merchant.slug)
