"""Merchant pages: list (search, filters, sorting, 10,000 merchants), register, approve, suspend,
reactivate, issue and revoke tokens, the per-merchant page and ``last_seen_at``."""

from __future__ import annotations

import re
from datetime import timedelta

import pytest
from django.conf import settings
from django.test import Client
from django.utils import timezone

from clients import services as client_services
from clients import tokens
from clients.models import ApiToken, Merchant
from rounds import services
from rounds.models import Event, Round
from tests.factories import MerchantFactory, ViewerFactory, make_open_round, submit_update

pytestmark = pytest.mark.django_db

TOKEN_RE = re.compile(r"flp_[a-z0-9]{8}_[A-Za-z0-9_-]{43}")


@pytest.fixture
def viewer_client() -> Client:
    client = Client(enforce_csrf_checks=True)
    client.force_login(ViewerFactory())
    client.get("/accounts/login/")
    client.defaults["HTTP_X_CSRFTOKEN"] = client.cookies["csrftoken"].value
    return client


@pytest.fixture
def csrfless_client(operator) -> Client:
    """A logged-in operator whose requests carry no CSRF token."""
    client = Client(enforce_csrf_checks=True)
    client.force_login(operator)
    return client


def _slugs(response) -> list[str]:
    return re.findall(r'<tr data-slug="([^"]+)">', response.content.decode())


def _messages(response) -> str:
    return " ".join(str(m) for m in response.context["messages"])


# --- list -------------------------------------------------------------------------------------


def test_a_viewer_reads_the_list_without_action_links(viewer_client):
    MerchantFactory(name="Acme Grocer", slug="acme")
    response = viewer_client.get("/merchants/")
    assert response.status_code == 200
    assert _slugs(response) == ["acme"]
    assert 'id="register-merchant"' not in response.content.decode()


def test_an_operator_sees_the_register_link(operator_client):
    assert 'id="register-merchant"' in operator_client.get("/merchants/").content.decode()


def test_search_matches_name_slug_and_email(operator_client):
    MerchantFactory(name="Blue Fashion", slug="bf")
    MerchantFactory(name="Red Shoes", slug="red-shoes")
    MerchantFactory(name="Green", slug="green", contact_email="ops@bluemail.example")
    assert _slugs(operator_client.get("/merchants/?q=blue")) == ["bf", "green"]
    assert _slugs(operator_client.get("/merchants/?q=RED-sh")) == ["red-shoes"]


def test_filters_by_status_category_and_region(operator_client):
    MerchantFactory(slug="a", name="A", category="grocery", region="eu-west")
    MerchantFactory(slug="b", name="B", category="fashion", region="eu-west")
    MerchantFactory(slug="c", name="C", category="fashion", region="us-east", status="pending")
    assert _slugs(operator_client.get("/merchants/?category=fashion")) == ["b", "c"]
    assert _slugs(operator_client.get("/merchants/?region=eu-west")) == ["a", "b"]
    assert _slugs(operator_client.get("/merchants/?status=pending")) == ["c"]
    response = operator_client.get("/merchants/?category=fashion&region=us-east&status=pending")
    assert _slugs(response) == ["c"]
    html = response.content.decode()
    assert '<option value="fashion" selected>fashion</option>' in html
    assert '<option value="us-east" selected>us-east</option>' in html


def test_an_invalid_filter_is_reported_and_ignored(operator_client):
    MerchantFactory(slug="a", name="A")
    response = operator_client.get("/merchants/?status=bogus&sort=nonsense")
    assert response.status_code == 200
    html = response.content.decode()
    assert "Select a valid choice. bogus is not one of the available choices." in html
    assert "The filters were ignored." in html
    assert _slugs(response) == ["a"]


def _participation_fixture():
    """alpha: 2 rounds, 2 accepted; beta: 2 rounds, 1 accepted; gamma: none; seen at times."""
    now = timezone.now()
    alpha = MerchantFactory(name="Alpha", slug="alpha", last_seen_at=now - timedelta(hours=2))
    beta = MerchantFactory(name="Beta", slug="beta", last_seen_at=now)
    first = make_open_round(min_updates=2)
    submit_update(first, alpha)
    submit_update(first, beta)
    second = make_open_round(min_updates=2)
    submit_update(second, alpha)
    gamma = MerchantFactory(name="Gamma", slug="gamma")
    return alpha, beta, gamma, first, second


def test_rounds_joined_and_acceptance_rate_are_shown_and_sortable(operator_client):
    _participation_fixture()
    response = operator_client.get("/merchants/")
    page = {m.slug: m for m in response.context["page"].object_list}
    assert (page["alpha"].rounds_joined, page["alpha"].accepted_updates) == (2, 2)
    assert (page["beta"].rounds_joined, page["beta"].accepted_updates) == (2, 1)
    assert page["beta"].acceptance_rate == pytest.approx(0.5)
    assert page["gamma"].rounds_joined == 0 and page["gamma"].acceptance_rate is None
    html = response.content.decode()
    assert "50% <span" in html and "(1/2)" in html
    assert _slugs(operator_client.get("/merchants/?sort=-acceptance")) == ["alpha", "beta", "gamma"]
    assert _slugs(operator_client.get("/merchants/?sort=acceptance")) == ["beta", "alpha", "gamma"]
    assert _slugs(operator_client.get("/merchants/?sort=-rounds"))[-1] == "gamma"
    assert _slugs(operator_client.get("/merchants/?sort=-last_seen")) == ["beta", "alpha", "gamma"]
    assert _slugs(operator_client.get("/merchants/?sort=last_seen")) == ["alpha", "beta", "gamma"]
    assert _slugs(operator_client.get("/merchants/?sort=-name")) == ["gamma", "beta", "alpha"]


def test_filters_by_last_seen_rounds_joined_and_acceptance_rate(operator_client):
    _participation_fixture()

    def slugs(query: str) -> list[str]:
        return _slugs(operator_client.get(f"/merchants/?{query}"))

    assert slugs("seen=1h") == ["beta"]
    assert slugs("seen=1d") == ["alpha", "beta"]
    assert slugs("seen=never") == ["gamma"]
    assert slugs("min_rounds=2") == ["alpha", "beta"]
    assert slugs("min_acceptance=75") == ["alpha"]
    assert slugs("min_acceptance=50&sort=acceptance") == ["beta", "alpha"]
    assert slugs("min_rounds=1&seen=1h&sort=-rounds") == ["beta"]
    response = operator_client.get("/merchants/?min_acceptance=101")
    assert response.status_code == 200 and "The filters were ignored" in response.content.decode()


def test_sort_links_toggle_and_keep_the_filters(operator_client):
    MerchantFactory(slug="a", name="A")
    html = operator_client.get("/merchants/?status=active&sort=rounds&page=1").content.decode()
    assert 'href="?status=active&amp;sort=-rounds" id="sort-rounds"' in html
    assert 'href="?status=active&amp;sort=last_seen" id="sort-last_seen"' in html
    assert 'aria-sort="ascending"' in html


def test_ten_thousand_merchants_page_in_a_bounded_number_of_queries(
    operator_client, django_assert_max_num_queries
):
    now = timezone.now()
    Merchant.objects.bulk_create(
        [
            Merchant(
                name=f"Shop {i:05d}",
                slug=f"bulk-{i:05d}",
                status=("active", "pending", "suspended")[i % 3],
                category=("grocery", "fashion", "electronics", "home")[i % 4],
                region=("eu-west", "us-east", "apac")[i % 3],
                last_seen_at=now - timedelta(minutes=i) if i % 2 else None,
            )
            for i in range(10_000)
        ],
        batch_size=2000,
    )
    fl_round = make_open_round(min_updates=1)  # invites the 3,334 active merchants
    submit_update(fl_round, Merchant.objects.get(slug="bulk-09999"))

    with django_assert_max_num_queries(10):
        response = operator_client.get("/merchants/")
    assert response.status_code == 200
    html = response.content.decode()
    assert "10000 merchants" in html
    assert '<span id="page-current">Page 1 of 200</span>' in html
    assert 'href="?page=2" id="page-next"' in html
    assert len(_slugs(response)) == 50

    with django_assert_max_num_queries(10):
        response = operator_client.get("/merchants/?sort=-acceptance&status=active&page=2")
    assert "Page 2 of 67" in response.content.decode()
    with django_assert_max_num_queries(10):
        response = operator_client.get("/merchants/?sort=-acceptance")
    assert _slugs(response)[0] == "bulk-09999"
    with django_assert_max_num_queries(10):
        response = operator_client.get("/merchants/?sort=-last_seen&q=shop+0&page=9999")
    assert "Page 200 of 200" in response.content.decode()
    assert 'id="page-prev"' in response.content.decode()


# --- register -------------------------------------------------------------------------------


def test_the_register_form_is_for_operators(operator_client, viewer_client):
    response = operator_client.get("/merchants/new/")
    assert response.status_code == 200
    assert 'id="register"' in response.content.decode()
    assert viewer_client.get("/merchants/new/").status_code == 403


def test_registering_a_merchant_creates_it_pending_and_audits_the_operator(
    operator_client, operator
):
    response = operator_client.post(
        "/merchants/new/",
        {"name": "Corner Shop", "category": "grocery", "region": "eu-north", "size_band": "small"},
    )
    assert response.status_code == 302
    assert response["Location"] == "/merchants/corner-shop/"
    merchant = Merchant.objects.get(slug="corner-shop")
    assert (merchant.status, merchant.category, merchant.size_band) == (
        "pending",
        "grocery",
        "small",
    )
    event = Event.objects.get(kind="merchant.created")
    assert (event.merchant, event.actor, event.actor_label) == (
        merchant,
        operator,
        f"operator:{operator.username}",
    )
    page = operator_client.get(response["Location"])
    assert "Registered Corner Shop (Pending approval)." in page.content.decode()


def test_registering_with_approve_now_makes_it_active(operator_client):
    operator_client.post("/merchants/new/", {"name": "Quick", "slug": "quick", "approve": "on"})
    assert Merchant.objects.get(slug="quick").status == "active"


@pytest.mark.parametrize(
    ("data", "field", "message"),
    [
        ({"name": "  "}, "name", "This field is required."),
        ({"name": "X", "contact_email": "not-an-email"}, "contact_email", "valid email"),
        ({"name": "X", "slug": "no spaces"}, "slug", "consisting of letters, numbers"),
        ({"name": "X", "size_band": "huge"}, "size_band", "Select a valid choice."),
    ],
)
def test_invalid_registrations_show_the_error_and_create_nothing(
    operator_client, data, field, message
):
    response = operator_client.post("/merchants/new/", data)
    assert response.status_code == 400
    html = response.content.decode()
    assert f'id="error-{field}"' in html
    assert message in html
    assert not Merchant.objects.exists()


def test_a_taken_slug_is_shown_on_the_slug_field(operator_client):
    MerchantFactory(slug="taken")
    response = operator_client.post("/merchants/new/", {"name": "Taken"})
    assert response.status_code == 400
    assert "A merchant with slug &#x27;taken&#x27; already exists." in response.content.decode()
    assert Merchant.objects.count() == 1
    assert not Event.objects.filter(kind="merchant.created").exists()


def test_a_viewer_cannot_register(viewer_client):
    assert viewer_client.post("/merchants/new/", {"name": "Nope"}).status_code == 403
    assert not Merchant.objects.exists()


def test_registering_needs_the_csrf_token(csrfless_client):
    assert csrfless_client.post("/merchants/new/", {"name": "Nope"}).status_code == 403
    assert not Merchant.objects.exists()


# --- status actions -----------------------------------------------------------------------------


def test_approve_suspend_reactivate(operator_client, operator):
    merchant = MerchantFactory(slug="m", status="pending")
    url = "/merchants/m/status/"
    html = operator_client.get("/merchants/m/").content.decode()
    assert 'id="approve"' in html and 'id="suspend"' in html and 'id="reactivate"' not in html

    response = operator_client.post(url, {"status": "active"}, follow=True)
    assert "is now Active." in _messages(response)
    merchant.refresh_from_db()
    assert merchant.status == "active"
    assert 'id="reactivate"' not in response.content.decode()

    operator_client.post(url, {"status": "suspended"})
    merchant.refresh_from_db()
    assert merchant.status == "suspended"
    assert 'id="reactivate"' in operator_client.get("/merchants/m/").content.decode()

    operator_client.post(url, {"status": "active"})
    merchant.refresh_from_db()
    assert merchant.status == "active"
    changes = Event.objects.filter(kind="merchant.status").order_by("id")
    assert [(e.data["from"], e.data["to"]) for e in changes] == [
        ("pending", "active"),
        ("active", "suspended"),
        ("suspended", "active"),
    ]
    assert {e.actor for e in changes} == {operator}


def test_a_forbidden_transition_shows_why_and_changes_nothing(operator_client):
    merchant = MerchantFactory(slug="m", status="active")
    response = operator_client.post("/merchants/m/status/", {"status": "pending"}, follow=True)
    assert "Nothing changed: A active merchant cannot become pending." in _messages(response)
    merchant.refresh_from_db()
    assert merchant.status == "active"
    assert not Event.objects.filter(kind="merchant.status").exists()


def test_an_unknown_status_is_refused(operator_client):
    MerchantFactory(slug="m", status="active")
    response = operator_client.post("/merchants/m/status/", {"status": "deleted"}, follow=True)
    assert "Choose a valid status" in _messages(response)
    assert Merchant.objects.get(slug="m").status == "active"


def test_status_actions_are_post_only_operator_only_and_csrf_checked(
    operator_client, viewer_client, csrfless_client
):
    MerchantFactory(slug="m", status="pending")
    assert operator_client.get("/merchants/m/status/").status_code == 405
    assert viewer_client.post("/merchants/m/status/", {"status": "active"}).status_code == 403
    assert csrfless_client.post("/merchants/m/status/", {"status": "active"}).status_code == 403
    assert (
        operator_client.post("/merchants/nobody/status/", {"status": "active"}).status_code == 404
    )
    assert Merchant.objects.get(slug="m").status == "pending"


# --- tokens ---------------------------------------------------------------------------------


def test_an_issued_token_is_shown_once_and_works(operator_client, operator):
    merchant = MerchantFactory(slug="m")
    response = operator_client.post("/merchants/m/tokens/", {"label": "pos-1"})
    assert response.status_code == 200
    assert "no-store" in response["Cache-Control"]
    html = response.content.decode()
    plaintext = TOKEN_RE.search(html).group(0)
    assert f'<code id="token-plaintext">{plaintext}</code>' in html
    assert 'id="copy-token" data-copy-target="token-plaintext"' in html
    assert "/static/js/copy.js" in html

    token = ApiToken.objects.get(merchant=merchant)
    assert (token.label, token.created_by) == ("pos-1", operator)
    assert tokens.matches(plaintext, token.hashed_key, settings.TOKEN_HASH_KEY)
    assert plaintext not in token.hashed_key
    assert Event.objects.get(kind="token.issued").actor == operator

    detail = operator_client.get("/merchants/m/").content.decode()
    assert plaintext not in detail
    assert f"flp_{token.prefix}_" in detail
    assert not TOKEN_RE.search(detail)
    assert Client(HTTP_AUTHORIZATION=f"Bearer {plaintext}").get("/api/v1/me").status_code == 200


def test_a_token_with_a_future_expiry(operator_client):
    MerchantFactory(slug="m")
    when = (timezone.now() + timedelta(days=30)).strftime("%Y-%m-%dT%H:%M")
    assert operator_client.post("/merchants/m/tokens/", {"expires_at": when}).status_code == 200
    assert ApiToken.objects.get().expires_at > timezone.now() + timedelta(days=29)


@pytest.mark.parametrize(
    ("expires_at", "message"),
    [("2001-01-01T00:00", "expires_at must be in the future."), ("soon", "Enter a valid date")],
)
def test_an_invalid_expiry_is_shown_and_issues_nothing(operator_client, expires_at, message):
    MerchantFactory(slug="m")
    response = operator_client.post("/merchants/m/tokens/", {"expires_at": expires_at})
    assert response.status_code == 400
    html = response.content.decode()
    assert 'id="error-expires_at"' in html and message in html
    assert not TOKEN_RE.search(html)
    assert not ApiToken.objects.exists()


def test_token_issue_is_operator_only_and_csrf_checked(viewer_client, csrfless_client):
    MerchantFactory(slug="m")
    assert viewer_client.post("/merchants/m/tokens/", {"label": "x"}).status_code == 403
    assert csrfless_client.post("/merchants/m/tokens/", {"label": "x"}).status_code == 403
    assert not ApiToken.objects.exists()


def test_revoking_a_token_stops_it_and_is_audited(operator_client, operator):
    merchant = MerchantFactory(slug="m")
    token, plaintext = client_services.token_issue(merchant=merchant, label="old")
    response = operator_client.post(f"/merchants/m/tokens/{token.pk}/revoke/", follow=True)
    assert f"Token {token.prefix} revoked" in _messages(response)
    token.refresh_from_db()
    assert token.revoked_at is not None
    assert Event.objects.get(kind="token.revoked").actor == operator
    assert f'id="revoke-{token.pk}"' not in response.content.decode()
    assert Client(HTTP_AUTHORIZATION=f"Bearer {plaintext}").get("/api/v1/me").status_code == 401

    again = operator_client.post(f"/merchants/m/tokens/{token.pk}/revoke/", follow=True)
    assert "was already revoked" in _messages(again)
    assert Event.objects.filter(kind="token.revoked").count() == 1


def test_revoke_is_scoped_to_the_merchant_operator_only_and_csrf_checked(
    operator_client, viewer_client, csrfless_client
):
    MerchantFactory(slug="m")
    token, _ = client_services.token_issue(merchant=MerchantFactory(slug="other"))
    assert operator_client.post(f"/merchants/m/tokens/{token.pk}/revoke/").status_code == 404
    url = f"/merchants/other/tokens/{token.pk}/revoke/"
    assert viewer_client.post(url).status_code == 403
    assert csrfless_client.post(url).status_code == 403
    assert operator_client.get(url).status_code == 405
    token.refresh_from_db()
    assert token.revoked_at is None


# --- the merchant page --------------------------------------------------------------------------


def test_the_merchant_page_shows_attributes_tokens_and_participation(viewer_client):
    _, beta, _, first, second = _participation_fixture()
    services.round_cancel(fl_round=second)
    third = make_open_round(min_updates=1)
    client_services.token_issue(merchant=beta, label="shop-server")

    response = viewer_client.get("/merchants/beta/")
    assert response.status_code == 200
    html = response.content.decode()
    assert "Beta" in html and "grocery" in html and "eu-west" in html
    assert "shop-server" in html and "usable" in html
    rows = {row["fl_round"].pk: row for row in response.context["history"].object_list}
    assert rows[first.pk]["outcome"] == "accepted"
    assert rows[first.pk]["update"].num_examples == 10
    assert rows[second.pk]["outcome"] == "dropped"
    assert rows[third.pk]["outcome"] == "invited"
    assert [r["fl_round"].pk for r in response.context["history"].object_list] == [
        third.pk,
        second.pk,
        first.pk,
    ]
    stats = response.context["stats"]
    assert (stats["rounds_joined"], stats["accepted_updates"]) == (3, 1)
    assert 'id="issue-token"' not in html and 'id="suspend"' not in html


def test_participation_history_is_paginated(operator_client):
    merchant = MerchantFactory(slug="m")
    fl_round = make_open_round(min_updates=1)
    now = timezone.now()
    extra = Round.objects.bulk_create(
        [
            Round(
                fl_model=fl_round.fl_model,
                number=n,
                status="completed",
                min_updates=1,
                target_updates=1,
                duration_seconds=60,
                opens_at=now,
                created_at=now - timedelta(minutes=n),
            )
            for n in range(2, 31)
        ]
    )
    Round.participants.through.objects.bulk_create(
        [Round.participants.through(round_id=r.pk, merchant_id=merchant.pk) for r in extra]
    )
    first = operator_client.get("/merchants/m/")
    assert len(first.context["history"].object_list) == 25
    assert 'id="history-next"' in first.content.decode()
    second = operator_client.get("/merchants/m/?page=2")
    assert len(second.context["history"].object_list) == 5
    assert {r["outcome"] for r in second.context["history"].object_list} == {"dropped"}


def test_an_unknown_merchant_is_404(operator_client):
    assert operator_client.get("/merchants/nobody/").status_code == 404


# --- last seen ------------------------------------------------------------------------------


def test_token_use_sets_last_seen_at_most_once_a_minute(django_assert_num_queries):
    merchant = MerchantFactory()
    _, plaintext = client_services.token_issue(merchant=merchant)
    client_services.token_authenticate(plaintext=plaintext)
    merchant.refresh_from_db()
    first = merchant.last_seen_at
    assert first is not None and timezone.now() - first < timedelta(seconds=5)

    with django_assert_num_queries(1):  # the token lookup only: no write within the minute
        client_services.token_authenticate(plaintext=plaintext)
    merchant.refresh_from_db()
    assert merchant.last_seen_at == first

    Merchant.objects.filter(pk=merchant.pk).update(last_seen_at=first - timedelta(minutes=2))
    ApiToken.objects.update(last_used_at=first - timedelta(minutes=2))
    client_services.token_authenticate(plaintext=plaintext)
    merchant.refresh_from_db()
    assert merchant.last_seen_at > first


def test_a_rejected_token_does_not_mark_the_merchant_seen():
    merchant = MerchantFactory()
    token, plaintext = client_services.token_issue(merchant=merchant)
    client_services.token_revoke(token=token)
    with pytest.raises(Exception, match="revoked"):
        client_services.token_authenticate(plaintext=plaintext)
    merchant.refresh_from_db()
    assert merchant.last_seen_at is None
