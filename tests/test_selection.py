"""Participant selection (all active, a random fraction with over-selection, a cohort) and
scheduling a series of rounds: the pure core, the services, beat, and the operator API."""

from __future__ import annotations

import json
import random
import secrets
import uuid
from datetime import timedelta

import pytest
from django.utils import timezone

from clients.models import Merchant
from flportal.errors import Conflict, NotFound, ValidationFailed
from rounds import services
from rounds.models import Event, Round
from rounds.services import selection
from tests.factories import MerchantFactory, make_fl_model

# --- the pure core ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("eligible", "fraction", "over", "expected"),
    [
        (10, 0.3, 0.2, 4),  # 10 * 0.3 * 1.2 = 3.6 -> 4
        (100, 0.3, 0.0, 30),  # binary floats say 30.000000000000004; exactly 30
        (100, 0.3, 0.2, 36),
        (7, 0.5, 0.0, 4),  # 3.5 rounds up
        (3, 0.01, 0.0, 1),  # any positive share invites at least one
        (10, 0.9, 0.5, 10),  # capped at everyone eligible
        (10, 1.0, 0.0, 10),
        (0, 0.3, 0.2, 0),
        (1000, 0.1, 0.3, 130),
    ],
)
def test_invite_count_is_the_ceiling_of_the_over_selected_fraction_capped_at_everyone(
    eligible, fraction, over, expected
):
    assert selection.invite_count(eligible, fraction=fraction, over_selection=over) == expected


def test_select_with_a_fraction_samples_that_many_distinct_candidates_in_their_order():
    candidates = list(range(100, 120))

    chosen = selection.select(candidates, fraction=0.25, over_selection=0.2, rng=random.Random(1))

    assert len(chosen) == 6  # ceil(20 * 0.25 * 1.2)
    assert len(set(chosen)) == 6
    assert set(chosen) <= set(candidates)
    assert chosen == sorted(chosen)


def test_select_is_deterministic_for_a_seeded_generator_and_varies_across_seeds():
    candidates = list(range(50))

    first = selection.select(candidates, fraction=0.2, rng=random.Random(42))
    again = selection.select(candidates, fraction=0.2, rng=random.Random(42))
    others = {
        tuple(selection.select(candidates, fraction=0.2, rng=random.Random(s))) for s in range(5)
    }

    assert first == again
    assert len(others) > 1


def test_select_without_a_fraction_takes_everyone_and_draws_nothing():
    class NoDraws(random.Random):
        def sample(self, *args, **kwargs):  # type: ignore[override]
            raise AssertionError("everyone is invited; no randomness is needed")

    assert selection.select([3, 1, 2], rng=NoDraws()) == [3, 1, 2]
    assert selection.select([], fraction=0.5, rng=NoDraws()) == []


def test_sampling_is_uniform_over_candidates():
    counts = dict.fromkeys(range(10), 0)
    rng = random.Random(7)
    for _ in range(2000):
        for c in selection.select(list(range(10)), fraction=0.3, rng=rng):
            counts[c] += 1

    assert sum(counts.values()) == 2000 * 3
    assert all(500 < n < 700 for n in counts.values())  # each expected 600


def test_parse_selection_normalises_a_policy():
    policy = selection.parse_selection(
        {
            "fraction": 0.3,
            "over_selection": 0.2,
            "cohort": {"category": ["grocery", " fashion ", "grocery"], "region": "eu-west"},
        }
    )

    assert policy == {
        "fraction": 0.3,
        "over_selection": 0.2,
        "cohort": {"category": ["fashion", "grocery"], "region": ["eu-west"]},
    }


@pytest.mark.parametrize("raw", [None, {}, {"fraction": 1}, {"cohort": {}}, {"cohort": None}])
def test_a_policy_that_selects_everyone_is_stored_as_an_empty_object(raw):
    assert selection.parse_selection(raw) == {}


@pytest.mark.parametrize(
    ("raw", "code"),
    [
        ([], "invalid_selection"),
        ({"everyone": True}, "invalid_selection"),
        ({"fraction": 0}, "invalid_fraction"),
        ({"fraction": 1.5}, "invalid_fraction"),
        ({"fraction": "half"}, "invalid_fraction"),
        ({"fraction": True}, "invalid_fraction"),
        ({"fraction": float("nan")}, "invalid_fraction"),
        ({"fraction": 0.5, "over_selection": -0.1}, "invalid_over_selection"),
        ({"fraction": 0.5, "over_selection": 1.5}, "invalid_over_selection"),
        ({"over_selection": 0.2}, "invalid_over_selection"),  # over-selecting everyone
        ({"cohort": ["grocery"]}, "invalid_cohort"),
        ({"cohort": {"colour": ["red"]}}, "invalid_cohort"),
        ({"cohort": {"category": [""]}}, "invalid_cohort"),
        ({"cohort": {"category": [1]}}, "invalid_cohort"),
        ({"cohort": {"region": ["x" * 65]}}, "invalid_cohort"),
    ],
)
def test_an_invalid_policy_is_refused_with_a_code(raw, code):
    with pytest.raises(ValidationFailed) as exc:
        selection.parse_selection(raw)

    assert exc.value.code == code


def test_a_policy_is_described_in_words():
    assert selection.describe({}) == "all active merchants"
    assert (
        selection.describe(
            {
                "fraction": 0.3,
                "over_selection": 0.2,
                "cohort": {"category": ["grocery"], "region": ["eu-west", "eu-north"]},
            }
        )
        == "30% (+20% over-selection) of active merchants with category grocery and region "
        "eu-west or eu-north"
    )


# --- applying a policy when a round opens -------------------------------------------------


class _frozen:
    """Move the services' clock (timezone.now) forward."""

    def __init__(self, when):
        self.when = when

    def __enter__(self):
        self.patch = pytest.MonkeyPatch()
        self.patch.setattr(timezone, "now", lambda: self.when)
        return self

    def __exit__(self, *exc):
        self.patch.undo()


def _shops() -> dict[str, Merchant]:
    """Six active shops over two categories, two regions and three size bands, plus two
    inactive ones that are never invited."""
    rows = [
        ("g-small-w", "grocery", "eu-west", "small"),
        ("g-large-w", "grocery", "eu-west", "large"),
        ("g-small-n", "grocery", "eu-north", "small"),
        ("f-small-w", "fashion", "eu-west", "small"),
        ("f-medium-n", "fashion", "eu-north", "medium"),
        ("f-large-n", "fashion", "eu-north", "large"),
    ]
    shops = {
        slug: MerchantFactory(slug=slug, category=cat, region=region, size_band=size)
        for slug, cat, region, size in rows
    }
    MerchantFactory(slug="pending", status=Merchant.Status.PENDING, category="grocery")
    MerchantFactory(slug="suspended", status=Merchant.Status.SUSPENDED, category="grocery")
    return shops


def _invited(fl_round: Round) -> set[str]:
    return set(fl_round.participants.values_list("slug", flat=True))


@pytest.mark.django_db
def test_without_a_policy_every_active_merchant_is_invited():
    shops = _shops()

    fl_round = services.rounds_schedule(fl_model=make_fl_model(), min_updates=1)[0]

    assert fl_round.status == Round.Status.OPEN
    assert _invited(fl_round) == set(shops)


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("cohort", "expected"),
    [
        ({"category": ["grocery"]}, {"g-small-w", "g-large-w", "g-small-n"}),
        ({"category": ["grocery"], "region": ["eu-north"]}, {"g-small-n"}),
        ({"size_band": ["small", "medium"]}, {"g-small-w", "g-small-n", "f-small-w", "f-medium-n"}),
        (
            {"category": ["fashion"], "region": ["eu-west", "eu-north"], "size_band": ["large"]},
            {"f-large-n"},
        ),
    ],
)
def test_a_cohort_invites_the_active_merchants_matching_every_attribute(cohort, expected):
    _shops()

    fl_round = services.rounds_schedule(
        fl_model=make_fl_model(), min_updates=1, selection={"cohort": cohort}
    )[0]

    assert fl_round.status == Round.Status.OPEN
    assert _invited(fl_round) == expected


@pytest.mark.django_db
def test_a_fraction_with_over_selection_invites_the_rounded_up_count_at_random():
    shops = _shops()

    fl_round = services.rounds_schedule(
        fl_model=make_fl_model(),
        min_updates=1,
        selection={"fraction": 0.3, "over_selection": 0.2},
    )[0]

    assert len(_invited(fl_round)) == 3  # ceil(6 * 0.3 * 1.2) = ceil(2.16)
    assert _invited(fl_round) <= set(shops)
    assert fl_round.target_updates == 2  # the fraction's own ceil(6 * 0.3), not the extra


@pytest.mark.django_db
def test_a_fraction_combines_with_a_cohort():
    _shops()

    fl_round = services.rounds_schedule(
        fl_model=make_fl_model(),
        min_updates=1,
        selection={"fraction": 0.5, "cohort": {"category": ["fashion"]}},
    )[0]

    invited = _invited(fl_round)
    assert len(invited) == 2  # ceil(3 * 0.5)
    assert invited <= {"f-small-w", "f-medium-n", "f-large-n"}


@pytest.mark.django_db
def test_the_sample_comes_from_the_operating_systems_cryptographic_source(monkeypatch):
    _shops()
    used = []
    real = selection.select

    def spy(candidates, **kwargs):
        used.append(type(kwargs["rng"]))
        return real(candidates, **kwargs)

    monkeypatch.setattr(selection, "select", spy)

    services.rounds_schedule(fl_model=make_fl_model(), min_updates=1, selection={"fraction": 0.5})

    assert used == [secrets.SystemRandom]


@pytest.mark.django_db
def test_the_opened_event_records_the_policy_and_the_chosen_participants():
    _shops()

    fl_round = services.rounds_schedule(
        fl_model=make_fl_model(),
        min_updates=1,
        selection={"fraction": 0.5, "over_selection": 0.2, "cohort": {"region": ["eu-north"]}},
    )[0]

    opened = Event.objects.get(kind="round.opened", fl_round=fl_round)
    assert opened.data["selection"] == {
        "fraction": 0.5,
        "over_selection": 0.2,
        "cohort": {"region": ["eu-north"]},
    }
    assert opened.data["eligible"] == 3
    assert opened.data["participants"] == 2  # ceil(3 * 0.5 * 1.2) = ceil(1.8)
    assert set(opened.data["invited"]) == _invited(fl_round)
    scheduled = Event.objects.get(kind="round.scheduled", fl_round=fl_round)
    assert scheduled.data["selection"] == opened.data["selection"]


@pytest.mark.django_db
def test_an_empty_cohort_fails_the_round_at_open_with_a_clear_reason():
    _shops()

    fl_round = services.rounds_schedule(
        fl_model=make_fl_model(),
        min_updates=1,
        selection={"cohort": {"category": ["electronics"]}},
    )[0]

    assert fl_round.status == Round.Status.FAILED
    assert fl_round.failure_reason == (
        "No active merchant matches the cohort (all active merchants with category "
        "electronics); the quorum is 1."
    )
    assert fl_round.participants.count() == 0


@pytest.mark.django_db
def test_a_selection_below_the_quorum_fails_and_says_how_many_were_invited():
    _shops()

    fl_round = services.rounds_schedule(
        fl_model=make_fl_model(),
        min_updates=3,
        target_updates=3,
        selection={"fraction": 0.2},
    )[0]

    assert fl_round.status == Round.Status.FAILED
    assert "invited 2 of 6 eligible merchants; the quorum is 3" in fl_round.failure_reason


@pytest.mark.django_db
def test_the_policy_is_applied_to_the_merchants_active_when_the_round_opens():
    fl_model = make_fl_model()
    start = timezone.now() + timedelta(minutes=10)
    fl_round = services.rounds_schedule(
        fl_model=fl_model,
        min_updates=1,
        opens_at=start,
        selection={"cohort": {"category": ["toys"]}},
    )[0]
    assert fl_round.status == Round.Status.SCHEDULED
    late = MerchantFactory(category="toys")

    with _frozen(start + timedelta(seconds=1)):
        services.rounds_tick()

    fl_round.refresh_from_db()
    assert fl_round.status == Round.Status.OPEN
    assert _invited(fl_round) == {late.slug}


# --- scheduling a series ------------------------------------------------------------------


@pytest.mark.django_db
def test_a_series_with_an_interval_is_spaced_and_shares_a_series_id():
    MerchantFactory()
    start = timezone.now() + timedelta(hours=1)

    rounds = services.rounds_schedule(
        fl_model=make_fl_model(),
        min_updates=1,
        opens_at=start,
        count=3,
        interval_seconds=1800,
        selection={"cohort": {"category": ["grocery"]}},
    )

    assert [r.opens_at for r in rounds] == [start + timedelta(minutes=30 * i) for i in range(3)]
    assert [r.number for r in rounds] == [1, 2, 3]
    assert len({r.series for r in rounds}) == 1
    assert isinstance(rounds[0].series, uuid.UUID)
    assert all(r.selection == {"cohort": {"category": ["grocery"]}} for r in rounds)
    assert all(r.status == Round.Status.SCHEDULED for r in rounds)


@pytest.mark.django_db
def test_beat_opens_each_round_of_a_series_when_it_falls_due(aggregate_calls):
    MerchantFactory()
    start = timezone.now() + timedelta(minutes=5)
    rounds = services.rounds_schedule(
        fl_model=make_fl_model(),
        min_updates=1,
        duration_seconds=60,
        opens_at=start,
        count=3,
        interval_seconds=600,
    )

    with _frozen(start - timedelta(seconds=1)):
        assert services.rounds_tick()["opened"] == 0
    with _frozen(start + timedelta(seconds=1)):
        assert services.rounds_tick()["opened"] == 1
    statuses = [Round.objects.get(pk=r.pk).status for r in rounds]
    assert statuses == ["open", "scheduled", "scheduled"]

    # the first one's deadline passes below quorum; the second is not due yet
    with _frozen(start + timedelta(seconds=120)):
        counts = services.rounds_tick()
    assert (counts["opened"], counts["closed"], counts["failed"]) == (0, 0, 1)
    assert Round.objects.get(pk=rounds[1].pk).status == Round.Status.SCHEDULED

    with _frozen(start + timedelta(seconds=601)):
        assert services.rounds_tick()["opened"] == 1
    assert Round.objects.get(pk=rounds[1].pk).status == Round.Status.OPEN
    assert Round.objects.get(pk=rounds[2].pk).status == Round.Status.SCHEDULED


@pytest.mark.django_db
def test_a_single_round_has_no_series():
    MerchantFactory()

    (fl_round,) = services.rounds_schedule(fl_model=make_fl_model(), min_updates=1)

    assert fl_round.series is None


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("kwargs", "code"),
    [
        ({"count": 0}, "invalid_count"),
        ({"count": 101}, "invalid_count"),
        ({"count": 2, "interval_seconds": 59}, "invalid_interval"),
        ({"count": 2, "interval_seconds": 31 * 24 * 3600}, "invalid_interval"),
        ({"count": 1, "interval_seconds": 600}, "invalid_interval"),
        ({"selection": {"fraction": 2}}, "invalid_fraction"),
        ({"min_updates": 0}, "invalid_quorum"),
        ({"target_updates": 1, "min_updates": 2}, "invalid_target"),
    ],
)
def test_an_invalid_schedule_is_refused_and_creates_nothing(kwargs, code):
    MerchantFactory()
    fl_model = make_fl_model()
    events = Event.objects.count()

    with pytest.raises(ValidationFailed) as exc:
        services.rounds_schedule(fl_model=fl_model, **{"min_updates": 1, **kwargs})

    assert exc.value.code == code
    assert Round.objects.count() == 0
    assert Event.objects.count() == events


@pytest.mark.django_db
def test_a_series_refused_part_way_creates_none_of_its_rounds():
    MerchantFactory()
    fl_model = make_fl_model(
        privacy={"clip_norm": 1.0, "noise_multiplier": 1.0, "delta": 1e-5, "epsilon_budget": 8}
    )
    events = Event.objects.count()

    with pytest.raises(Conflict) as exc:  # epsilon 4.7, 7.1, 9.0: the third overspends
        services.rounds_schedule(fl_model=fl_model, min_updates=1, count=3)

    assert exc.value.code == "privacy_budget_exhausted"
    assert Round.objects.count() == 0
    assert Event.objects.count() == events


@pytest.mark.django_db
def test_cancelling_a_series_cancels_its_open_and_scheduled_rounds_only(aggregate_calls):
    MerchantFactory()
    fl_model = make_fl_model()
    rounds = services.rounds_schedule(
        fl_model=fl_model, min_updates=1, count=3, interval_seconds=3600
    )
    other = services.rounds_schedule(
        fl_model=fl_model, min_updates=1, opens_at=timezone.now() + timedelta(days=1)
    )[0]
    assert [r.status for r in rounds] == ["open", "scheduled", "scheduled"]

    cancelled = services.round_series_cancel(series=rounds[0].series)

    assert [r.pk for r in cancelled] == [r.pk for r in rounds]
    assert set(Round.objects.filter(series=rounds[0].series).values_list("status", flat=True)) == {
        "cancelled"
    }
    assert Round.objects.get(pk=other.pk).status == Round.Status.SCHEDULED
    event = Event.objects.get(kind="series.cancelled")
    assert event.data["rounds"] == [1, 2, 3]

    with pytest.raises(Conflict) as exc:
        services.round_series_cancel(series=rounds[0].series)
    assert exc.value.code == "series_not_cancellable"
    with pytest.raises(NotFound):
        services.round_series_cancel(series=uuid.uuid4())


# --- the operator API -----------------------------------------------------------------------


def _post_rounds(client, payload):
    return client.post(
        "/api/v1/operator/rounds", data=json.dumps(payload), content_type="application/json"
    )


@pytest.mark.django_db
def test_the_api_schedules_a_spaced_series_with_a_selection(operator_client):
    _shops()
    make_fl_model(slug="m")
    opens_at = timezone.now() + timedelta(hours=2)

    response = _post_rounds(
        operator_client,
        {
            "model": "m",
            "min_updates": 1,
            "opens_at": opens_at.isoformat(),
            "count": 2,
            "interval_seconds": 3600,
            "selection": {
                "fraction": 0.5,
                "over_selection": 0.2,
                "cohort": {"region": ["eu-west"]},
            },
        },
    )

    assert response.status_code == 201, response.content
    body = response.json()
    assert [r["status"] for r in body] == ["scheduled", "scheduled"]
    assert body[0]["series"] == body[1]["series"] is not None
    assert body[0]["selection"] == {
        "fraction": 0.5,
        "over_selection": 0.2,
        "cohort": {"region": ["eu-west"]},
    }
    assert body[0]["target_updates"] == 2  # ceil(3 eligible * 0.5)
    second = Round.objects.get(pk=body[1]["id"])
    assert second.opens_at == opens_at + timedelta(hours=1)


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("selection_value", "code"),
    [
        ({"fraction": 0}, "invalid_fraction"),
        ({"fraction": 0.5, "over_selection": 3}, "invalid_over_selection"),
        ({"cohort": {"colour": ["red"]}}, "invalid_cohort"),
        ({"everyone": True}, "invalid_selection"),
        ({"fraction": "half"}, "invalid_input"),
    ],
)
def test_the_api_refuses_an_invalid_selection_with_a_code(operator_client, selection_value, code):
    MerchantFactory()
    make_fl_model(slug="m")

    response = _post_rounds(
        operator_client, {"model": "m", "min_updates": 1, "selection": selection_value}
    )

    assert response.status_code == 400, response.content
    assert response.json()["error"] == code
    assert Round.objects.count() == 0


@pytest.mark.django_db
def test_the_api_refuses_an_interval_without_a_series(operator_client):
    MerchantFactory()
    make_fl_model(slug="m")

    response = _post_rounds(
        operator_client, {"model": "m", "min_updates": 1, "interval_seconds": 600}
    )

    assert response.status_code == 400
    assert response.json()["error"] == "invalid_interval"
