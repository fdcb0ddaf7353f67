"""The audit log page: who did what and when, newest first, filterable, keyset-paged."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

import pytest
from django.test import Client

from clients import services as client_services
from rounds.models import Event
from rounds.views.audit import EVENTS_PER_PAGE
from tests.factories import MerchantFactory, ViewerFactory, make_open_round, submit_update

pytestmark = pytest.mark.django_db


def _ids(response) -> list[int]:
    return [int(i) for i in re.findall(r'<tr data-event-id="(\d+)">', response.content.decode())]


def _kinds(response) -> list[str]:
    return [e.kind for e in response.context["events"]]


def _link(response, rel_id: str) -> str | None:
    match = re.search(rf'href="(\?[^"]*)" id="{rel_id}"', response.content.decode())
    return match.group(1).replace("&amp;", "&") if match else None


def test_a_viewer_reads_the_audit_log(client):
    client.force_login(ViewerFactory())
    response = client.get("/audit/")
    assert response.status_code == 200
    assert "No events." in response.content.decode()
    assert client.post("/audit/").status_code == 405


def test_portal_actions_are_audited_with_the_operator_newest_first(operator_client, operator):
    operator_client.post("/merchants/new/", {"name": "Shop", "slug": "shop"})
    operator_client.post("/merchants/shop/status/", {"status": "active"})
    operator_client.post("/merchants/shop/tokens/", {"label": "k"})
    token_id = Event.objects.get(kind="token.issued").data["token_id"]
    operator_client.post(f"/merchants/shop/tokens/{token_id}/revoke/")

    response = operator_client.get("/audit/")
    assert _kinds(response) == [
        "token.revoked",
        "token.issued",
        "merchant.status",
        "merchant.created",
    ]
    html = response.content.decode()
    assert html.count(f"operator:{operator.username}") == 4
    assert 'href="/merchants/shop/"' in html
    assert "from=pending" in html and "to=active" in html
    assert "flp_" not in html  # prefixes only, never a token


def test_merchant_and_system_actions_are_labelled(operator_client):
    merchant = MerchantFactory(slug="acme")
    MerchantFactory(slug="other")
    fl_round = make_open_round(min_updates=2)
    submit_update(fl_round, merchant)

    response = operator_client.get("/audit/?actor_type=merchant")
    assert _kinds(response) == ["update.accepted"]
    assert "merchant:acme" in response.content.decode()
    assert f'href="/rounds/{fl_round.pk}/"' in response.content.decode()

    system = _kinds(operator_client.get("/audit/?actor_type=system"))
    assert "round.opened" in system and "update.accepted" not in system
    assert _kinds(operator_client.get("/audit/?actor_type=operator")) == []


def test_filters_by_kind_actor_merchant_and_round(operator_client, operator):
    acme = MerchantFactory(slug="acme")
    client_services.merchant_set_status(merchant=acme, status="suspended", actor=operator)
    other = MerchantFactory(slug="other")
    client_services.token_issue(merchant=other, actor=operator)
    fl_round = make_open_round(min_updates=1)
    submit_update(fl_round, other)

    assert _kinds(operator_client.get("/audit/?kind=token.issued")) == ["token.issued"]
    assert set(_kinds(operator_client.get("/audit/?kind=round"))) >= {"round.opened"}
    assert set(_kinds(operator_client.get("/audit/?kind=round"))) <= {
        "round.scheduled",
        "round.opened",
        "round.closed",
        "round.completed",
    }
    by_actor = _kinds(operator_client.get(f"/audit/?actor={operator.username}"))
    assert by_actor == ["token.issued", "merchant.status"]
    assert _kinds(operator_client.get("/audit/?actor=other")) == ["update.accepted"]
    assert _kinds(operator_client.get("/audit/?merchant=acme")) == ["merchant.status"]
    in_round = operator_client.get(f"/audit/?fl_round={fl_round.pk}&kind=update")
    assert _kinds(in_round) == ["update.accepted"]
    assert all(e.fl_round_id == fl_round.pk for e in in_round.context["events"])
    assert (
        "No events match these filters."
        in operator_client.get("/audit/?kind=nothing").content.decode()
    )


def test_filters_by_date_range(operator_client):
    day = datetime(2030, 3, 10, 12, tzinfo=UTC)
    Event.objects.bulk_create(
        [Event(kind=f"test.day{n}", created_at=day + timedelta(days=n)) for n in range(5)]
    )
    response = operator_client.get("/audit/?since=2030-03-11&until=2030-03-13")
    assert _kinds(response) == ["test.day3", "test.day2", "test.day1"]
    assert _kinds(operator_client.get("/audit/?until=2030-03-10")) == ["test.day0"]


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ("since=2030-03-12&until=2030-03-11", "The date range ends before it starts."),
        ("fl_round=abc", "Round id: Enter a whole number."),
        ("since=yesterday", "From: Enter a valid date."),
        ("merchant=no%20spaces", "Merchant: Enter a valid"),
    ],
)
def test_invalid_filters_are_explained(operator_client, query, message):
    response = operator_client.get(f"/audit/?{query}")
    assert response.status_code == 200
    html = response.content.decode()
    assert 'id="filter-errors"' in html
    assert message in html


def test_keyset_pages_walk_every_event_once_in_both_directions(
    operator_client, django_assert_max_num_queries
):
    start = datetime(2030, 1, 1, tzinfo=UTC)
    # Pairs of events share a timestamp, so the id must break ties.
    Event.objects.bulk_create(
        [Event(kind="test.tick", created_at=start + timedelta(seconds=n // 2)) for n in range(130)]
    )
    expected = list(Event.objects.order_by("-created_at", "-id").values_list("id", flat=True))

    seen, url, pages = [], "/audit/?kind=test.tick", []
    while url:
        with django_assert_max_num_queries(6):
            response = operator_client.get(url if url.startswith("/") else f"/audit/{url}")
        pages.append(response)
        seen += _ids(response)
        url = _link(response, "page-older")
    assert seen == expected
    assert [len(_ids(p)) for p in pages] == [EVENTS_PER_PAGE, EVENTS_PER_PAGE, 30]
    assert _link(pages[0], "page-newer") is None
    assert "kind=test.tick" in _link(pages[1], "page-newer")

    back = operator_client.get(f"/audit/{_link(pages[2], 'page-newer')}")
    assert _ids(back) == _ids(pages[1])
    first = operator_client.get(f"/audit/{_link(back, 'page-newer')}")
    assert _ids(first) == _ids(pages[0])
    assert _link(first, "page-newer") is None


def test_a_malformed_cursor_shows_the_newest_page(operator_client):
    Event.objects.create(kind="test.one")
    for cursor in ["before=junk", "after=1.2.3", "before=99999999999999999999999.1"]:
        response = operator_client.get(f"/audit/?{cursor}")
        assert response.status_code == 200
        assert _kinds(response) == ["test.one"]


def test_anonymous_is_redirected_and_a_merchant_token_does_not_help(merchant_token):
    response = Client(HTTP_AUTHORIZATION=f"Bearer {merchant_token}").get("/audit/")
    assert response.status_code == 302
    assert response["Location"] == "/accounts/login/?next=/audit/"
