"""Scheduling rounds from the portal: the schedule form (now, at a time, a series; quorum, target,
duration; all active merchants, a random fraction with over-selection, a cohort), the series page,
and cancelling a round or a series. Operators act, viewers read, anonymous visitors log in."""

from __future__ import annotations

import uuid
from datetime import timedelta

import pytest
from django.test import Client
from django.utils import timezone

from clients.models import Merchant
from rounds import services
from rounds.models import Event, Round
from tests.factories import MerchantFactory, ViewerFactory, make_fl_model, make_open_round

pytestmark = pytest.mark.django_db


@pytest.fixture
def viewer_client() -> Client:
    client = Client(enforce_csrf_checks=True)
    client.force_login(ViewerFactory())
    client.get("/accounts/login/")
    client.defaults["HTTP_X_CSRFTOKEN"] = client.cookies["csrftoken"].value
    return client


def _form(**overrides) -> dict:
    """What the browser sends for 'open now, every active merchant', with the page's defaults."""
    data = {
        "model": "m",
        "when": "now",
        "opens_at": "",
        "count": "5",
        "every": "1",
        "every_unit": "hours",
        "min_updates": "1",
        "target_updates": "",
        "duration": "10",
        "duration_unit": "minutes",
        "participants": "all",
        "fraction_percent": "30",
        "over_selection_percent": "20",
    }
    data.update(overrides)
    return {k: v for k, v in data.items() if v is not None}


def _local(when) -> str:
    return when.strftime("%Y-%m-%dT%H:%M")


def _later(minutes: int = 60):
    return (timezone.now() + timedelta(minutes=minutes)).replace(second=0, microsecond=0)


def _messages(client: Client, path: str) -> str:
    return client.get(path).content.decode()


# --- access -----------------------------------------------------------------------------------


def test_anonymous_visitors_are_sent_to_the_login_page():
    fl_round = make_open_round(fl_model=make_fl_model(slug="m"), min_updates=1)
    series = uuid.uuid4()
    client = Client()

    for method, path in [
        ("get", "/rounds/new/"),
        ("post", "/rounds/new/"),
        ("post", f"/rounds/{fl_round.pk}/cancel/"),
        ("get", f"/rounds/series/{series}/"),
        ("post", f"/rounds/series/{series}/cancel/"),
    ]:
        response = getattr(client, method)(path)
        assert response.status_code == 302, path
        assert response["Location"].startswith("/accounts/login/?next="), path


def test_a_viewer_cannot_schedule_or_cancel(viewer_client):
    MerchantFactory()
    fl_model = make_fl_model(slug="m")
    scheduled = services.rounds_schedule(
        fl_model=fl_model, min_updates=1, opens_at=_later(), count=2, interval_seconds=3600
    )

    assert viewer_client.get("/rounds/new/").status_code == 403
    assert viewer_client.post("/rounds/new/", _form()).status_code == 403
    assert viewer_client.post(f"/rounds/{scheduled[0].pk}/cancel/").status_code == 403
    assert viewer_client.post(f"/rounds/series/{scheduled[0].series}/cancel/").status_code == 403
    assert Round.objects.count() == 2
    assert set(Round.objects.values_list("status", flat=True)) == {"scheduled"}


def test_a_viewer_reads_a_series_without_the_cancel_button(viewer_client):
    MerchantFactory()
    rounds = services.rounds_schedule(
        fl_model=make_fl_model(slug="m"),
        min_updates=1,
        opens_at=_later(),
        count=2,
        interval_seconds=3600,
    )

    response = viewer_client.get(f"/rounds/series/{rounds[0].series}/")

    assert response.status_code == 200
    assert 'id="cancel-series"' not in response.content.decode()


def test_the_viewer_sees_no_cancel_buttons_on_the_model_page(viewer_client):
    MerchantFactory()
    make_open_round(fl_model=make_fl_model(slug="m"), min_updates=1)

    assert 'id="cancel-round-' not in viewer_client.get("/models/m/").content.decode()


def test_a_post_without_the_csrf_token_is_refused(operator):
    MerchantFactory()
    fl_model = make_fl_model(slug="m")
    fl_round = services.rounds_schedule(fl_model=fl_model, min_updates=1, opens_at=_later())[0]
    client = Client(enforce_csrf_checks=True)
    client.force_login(operator)

    assert client.post("/rounds/new/", _form()).status_code == 403
    assert client.post(f"/rounds/{fl_round.pk}/cancel/").status_code == 403
    assert Round.objects.count() == 1
    assert Round.objects.get().status == Round.Status.SCHEDULED


# --- the form page ----------------------------------------------------------------------------


def test_the_form_preselects_the_model_and_offers_the_active_merchants_cohorts(operator_client):
    make_fl_model(slug="a")
    make_fl_model(slug="m")
    MerchantFactory(category="fashion", region="eu-north", size_band="small")
    MerchantFactory(category="grocery", region="eu-west")
    MerchantFactory(category="toys", status=Merchant.Status.SUSPENDED)

    response = operator_client.get("/rounds/new/?model=m")

    assert response.status_code == 200
    page = response.content.decode()
    assert '<option value="m" selected>' in page
    assert 'id="schedule-round"' in page
    assert 'name="csrfmiddlewaretoken"' in page
    assert 'value="fashion"' in page
    assert 'value="eu-north"' in page
    assert 'value="toys"' not in page  # no active merchant is in it
    assert 'id="cohort-stats"' in page
    assert '"category": "fashion", "region": "eu-north", "size_band": "small", "n": 1' in page


def test_without_models_the_page_says_to_create_one(operator_client):
    page = operator_client.get("/rounds/new/").content.decode()

    assert 'id="no-models"' in page
    assert 'id="schedule-round"' not in page


# --- scheduling -------------------------------------------------------------------------------


def test_open_now_invites_every_active_merchant(operator_client, operator):
    shops = {MerchantFactory().slug for _ in range(3)}
    MerchantFactory(status=Merchant.Status.PENDING)
    make_fl_model(slug="m")

    response = operator_client.post("/rounds/new/", _form(min_updates="2", duration="2"))

    fl_round = Round.objects.get()
    assert response.status_code == 302
    assert response["Location"] == f"/rounds/{fl_round.pk}/"
    assert fl_round.status == Round.Status.OPEN
    assert set(fl_round.participants.values_list("slug", flat=True)) == shops
    assert (fl_round.min_updates, fl_round.target_updates) == (2, 2)
    assert fl_round.duration_seconds == 120
    assert fl_round.selection == {}
    assert fl_round.series is None
    assert fl_round.created_by == operator
    assert "Round #1 is open; 3 merchants invited." in _messages(operator_client, "/models/")


def test_at_a_time_schedules_one_round(operator_client):
    MerchantFactory()
    make_fl_model(slug="m")
    when = _later(90)

    response = operator_client.post(
        "/rounds/new/",
        _form(when="at", opens_at=_local(when), duration="2", duration_unit="hours"),
    )

    fl_round = Round.objects.get()
    assert response.status_code == 302
    assert fl_round.status == Round.Status.SCHEDULED
    assert fl_round.opens_at == when
    assert fl_round.duration_seconds == 7200
    assert "to open at" in _messages(operator_client, "/models/")


def test_a_recurring_series_is_spaced_by_its_interval_and_shown_as_a_group(operator_client):
    MerchantFactory()
    make_fl_model(slug="m")
    start = _later(30)

    response = operator_client.post(
        "/rounds/new/",
        _form(when="series", opens_at=_local(start), count="3", every="45", every_unit="minutes"),
    )

    rounds = list(Round.objects.order_by("number"))
    series = rounds[0].series
    assert response.status_code == 302
    assert response["Location"] == f"/rounds/series/{series}/"
    assert [r.opens_at for r in rounds] == [start + timedelta(minutes=45 * i) for i in range(3)]
    assert {r.series for r in rounds} == {series}
    page = operator_client.get(response["Location"]).content.decode()
    assert "Scheduled a series of 3 rounds" in page
    assert all(f'id="round-{r.pk}"' in page for r in rounds)
    assert 'id="cancel-series"' in page


def test_a_series_without_a_start_begins_now(operator_client):
    MerchantFactory()
    make_fl_model(slug="m")

    operator_client.post("/rounds/new/", _form(when="series", count="2", every="2"))

    first, second = Round.objects.order_by("number")
    assert first.status == Round.Status.OPEN
    assert second.status == Round.Status.SCHEDULED
    assert second.opens_at - first.opens_at == timedelta(hours=2)


def test_a_random_fraction_with_over_selection_invites_the_rounded_up_count(operator_client):
    shops = {MerchantFactory().slug for _ in range(10)}
    make_fl_model(slug="m")

    operator_client.post(
        "/rounds/new/",
        _form(participants="fraction", fraction_percent="30", over_selection_percent="20"),
    )

    fl_round = Round.objects.get()
    invited = set(fl_round.participants.values_list("slug", flat=True))
    assert fl_round.selection == {"fraction": 0.3, "over_selection": 0.2}
    assert len(invited) == 4  # ceil(10 * 0.3 * 1.2)
    assert invited <= shops
    assert fl_round.target_updates == 3  # what the fraction asks for; the extra absorbs drop-outs
    opened = Event.objects.get(kind="round.opened", fl_round=fl_round)
    assert set(opened.data["invited"]) == invited


def test_a_cohort_filter_combines_with_a_fraction(operator_client):
    fashion = {
        MerchantFactory(category="fashion", size_band=band).slug
        for band in ("small", "small", "large", "medium")
    }
    MerchantFactory(category="grocery", size_band="small")
    make_fl_model(slug="m")

    operator_client.post(
        "/rounds/new/",
        _form(
            participants="fraction",
            fraction_percent="50",
            over_selection_percent="0",
            category=["fashion"],
            size_band=["small", "large"],
        ),
    )

    fl_round = Round.objects.get()
    assert fl_round.selection == {
        "fraction": 0.5,
        "over_selection": 0.0,
        "cohort": {"category": ["fashion"], "size_band": ["large", "small"]},
    }
    invited = set(fl_round.participants.values_list("slug", flat=True))
    assert len(invited) == 2  # ceil(3 * 0.5) of the three small or large fashion shops
    assert invited <= fashion


def test_an_empty_cohort_fails_at_open_and_says_why(operator_client):
    MerchantFactory(category="fashion", region="eu-west")
    MerchantFactory(category="grocery", region="eu-north")
    make_fl_model(slug="m")

    response = operator_client.post(
        "/rounds/new/", _form(category=["fashion"], region=["eu-north"]), follow=True
    )

    fl_round = Round.objects.get()
    assert fl_round.status == Round.Status.FAILED
    assert "No active merchant matches the cohort" in fl_round.failure_reason
    assert "Round #1 failed to open: No active merchant matches the cohort" in (
        response.content.decode()
    )


@pytest.mark.parametrize(
    ("overrides", "field", "message"),
    [
        ({"when": "at", "opens_at": ""}, "opens_at", "Give the time the round opens."),
        ({"when": "series", "count": ""}, "count", "Required for a series."),
        ({"when": "series", "count": "1"}, "count", "greater than or equal to 2"),
        ({"when": "series", "count": "101"}, "count", "less than or equal to 100"),
        ({"when": "series", "every": ""}, "every", "Required for a series."),
        (
            {"participants": "fraction", "fraction_percent": ""},
            "fraction_percent",
            "Give the share of merchants to invite.",
        ),
        (
            {"participants": "fraction", "fraction_percent": "150"},
            "fraction_percent",
            "less than or equal to 100",
        ),
        (
            {"participants": "fraction", "fraction_percent": "100"},
            "over_selection_percent",
            "Over-selection needs a fraction below 1",
        ),
        ({"min_updates": "0"}, "min_updates", "greater than or equal to 1"),
        ({"min_updates": "3", "target_updates": "2"}, "target_updates", "at least min_updates"),
        ({"duration": ""}, "duration", "This field is required."),
        ({"when": "at", "opens_at": "yesterday"}, "opens_at", "Enter a valid date/time."),
        ({"model": "nope"}, "model", "Select a valid choice."),
        ({"category": ["electronics"]}, "category", "Select a valid choice."),
    ],
)
def test_an_invalid_form_shows_the_error_and_schedules_nothing(
    operator_client, overrides, field, message
):
    MerchantFactory()
    make_fl_model(slug="m")

    response = operator_client.post("/rounds/new/", _form(**overrides))

    assert response.status_code == 400
    page = response.content.decode()
    assert message in page
    assert f'id="error-{field}"' in page
    assert Round.objects.count() == 0
    assert not Event.objects.filter(kind__startswith="round.").exists()


def test_a_time_in_the_past_is_refused_by_the_service_and_shown_on_the_field(operator_client):
    MerchantFactory()
    make_fl_model(slug="m")

    response = operator_client.post(
        "/rounds/new/", _form(when="at", opens_at=_local(timezone.now() - timedelta(days=1)))
    )

    assert response.status_code == 400
    page = response.content.decode()
    assert 'id="error-opens_at"' in page
    assert "opens_at is in the past." in page
    assert Round.objects.count() == 0


def test_a_quorum_too_small_for_the_strategy_is_shown_on_the_quorum(operator_client):
    MerchantFactory()
    make_fl_model(slug="m", strategy="krum", strategy_params={"f": 2})

    response = operator_client.post("/rounds/new/", _form(min_updates="1"))

    assert response.status_code == 400
    page = response.content.decode()
    assert 'id="error-min_updates"' in page
    assert "needs at least" in page
    assert Round.objects.count() == 0


def test_a_series_over_the_privacy_budget_is_refused_whole(operator_client):
    MerchantFactory()
    make_fl_model(
        slug="m",
        privacy={"clip_norm": 1.0, "noise_multiplier": 1.0, "delta": 1e-5, "epsilon_budget": 8},
    )

    response = operator_client.post(
        "/rounds/new/", _form(when="series", count="3", every="1", every_unit="hours")
    )

    assert response.status_code == 400
    assert "of the model&#x27;s budget" in response.content.decode()
    assert Round.objects.count() == 0


def test_a_model_without_a_version_cannot_be_scheduled(operator_client):
    MerchantFactory()
    make_fl_model(slug="m", init="none")

    response = operator_client.post("/rounds/new/", _form())

    assert response.status_code == 400
    assert "upload initial weights first" in response.content.decode()
    assert 'id="schedule-form-errors"' in response.content.decode()


# --- cancelling -------------------------------------------------------------------------------


def test_an_operator_cancels_a_scheduled_round_and_returns_to_the_page(operator_client, operator):
    MerchantFactory()
    fl_round = services.rounds_schedule(
        fl_model=make_fl_model(slug="m"), min_updates=1, opens_at=_later()
    )[0]

    response = operator_client.post(f"/rounds/{fl_round.pk}/cancel/", {"next": "/models/m/"})

    assert response.status_code == 302
    assert response["Location"] == "/models/m/"
    fl_round.refresh_from_db()
    assert fl_round.status == Round.Status.CANCELLED
    assert Event.objects.get(kind="round.cancelled").actor == operator
    assert "Cancelled round #1" in _messages(operator_client, "/models/m/")


def test_an_operator_cancels_an_open_round_from_the_model_page(operator_client):
    MerchantFactory()
    fl_round = make_open_round(fl_model=make_fl_model(slug="m"), min_updates=1)
    page = operator_client.get("/models/m/").content.decode()
    assert f'id="cancel-round-{fl_round.pk}"' in page

    response = operator_client.post(f"/rounds/{fl_round.pk}/cancel/")

    assert response["Location"] == f"/rounds/{fl_round.pk}/"
    assert Round.objects.get(pk=fl_round.pk).status == Round.Status.CANCELLED


def test_a_finished_round_is_not_cancelled_and_the_page_says_so(operator_client):
    MerchantFactory()
    fl_round = make_open_round(fl_model=make_fl_model(slug="m"), min_updates=1)
    services.round_cancel(fl_round=fl_round)
    events = Event.objects.count()

    response = operator_client.post(f"/rounds/{fl_round.pk}/cancel/", {"next": "/models/m/"})

    assert response["Location"] == "/models/m/"
    assert "was not cancelled: A cancelled round cannot be cancelled." in _messages(
        operator_client, "/models/m/"
    )
    assert Event.objects.count() == events


def test_cancel_does_not_redirect_off_site(operator_client):
    MerchantFactory()
    fl_round = services.rounds_schedule(
        fl_model=make_fl_model(slug="m"), min_updates=1, opens_at=_later()
    )[0]

    response = operator_client.post(
        f"/rounds/{fl_round.pk}/cancel/", {"next": "https://evil.example/"}
    )

    assert response["Location"] == f"/rounds/{fl_round.pk}/"


def test_cancelling_an_unknown_round_or_series_is_not_found(operator_client):
    assert operator_client.post("/rounds/999/cancel/").status_code == 404
    assert operator_client.post(f"/rounds/series/{uuid.uuid4()}/cancel/").status_code == 404
    assert operator_client.get(f"/rounds/series/{uuid.uuid4()}/").status_code == 404


def test_cancel_is_post_only(operator_client):
    MerchantFactory()
    fl_round = make_open_round(fl_model=make_fl_model(slug="m"), min_updates=1)

    assert operator_client.get(f"/rounds/{fl_round.pk}/cancel/").status_code == 405
    assert Round.objects.get(pk=fl_round.pk).status == Round.Status.OPEN


def test_an_operator_cancels_what_is_left_of_a_series(operator_client, aggregate_calls):
    MerchantFactory()
    fl_model = make_fl_model(slug="m")
    rounds = services.rounds_schedule(
        fl_model=fl_model, min_updates=1, count=3, interval_seconds=3600
    )
    services.round_cancel(fl_round=rounds[0])  # already over
    page = operator_client.get(f"/rounds/series/{rounds[0].series}/").content.decode()
    assert "Cancel the 2 scheduled or open rounds" in page

    response = operator_client.post(f"/rounds/series/{rounds[0].series}/cancel/", follow=True)

    assert response.status_code == 200
    assert "Cancelled 2 rounds of the series." in response.content.decode()
    assert set(Round.objects.values_list("status", flat=True)) == {"cancelled"}
    assert Event.objects.get(kind="series.cancelled").data["rounds"] == [2, 3]


def test_cancelling_a_finished_series_changes_nothing_and_says_so(operator_client):
    MerchantFactory()
    rounds = services.rounds_schedule(
        fl_model=make_fl_model(slug="m"),
        min_updates=1,
        opens_at=_later(),
        count=2,
        interval_seconds=3600,
    )
    services.round_series_cancel(series=rounds[0].series)
    events = Event.objects.count()

    response = operator_client.post(f"/rounds/series/{rounds[0].series}/cancel/", follow=True)

    assert "Nothing was cancelled: No round of this series is scheduled or open." in (
        response.content.decode()
    )
    assert Event.objects.count() == events


def test_the_model_page_shows_each_rounds_selection_and_series(operator_client):
    MerchantFactory(category="grocery")
    services.rounds_schedule(
        fl_model=make_fl_model(slug="m"),
        min_updates=1,
        opens_at=_later(),
        count=2,
        interval_seconds=3600,
        selection={"fraction": 0.5, "over_selection": 0.1, "cohort": {"category": ["grocery"]}},
    )

    page = operator_client.get("/models/m/").content.decode()

    assert "50% (+10% over-selection) of active merchants with category grocery" in page
    assert "/rounds/series/" in page
