"""The live round page (/rounds/<id>/), the round list (/rounds/) and their WebSocket feeds:
per-merchant statuses, the download record, the snapshot, and who may see them."""

from __future__ import annotations

import json
import re
from datetime import timedelta

import pytest
from asgiref.sync import async_to_sync
from asgiref.testing import ApplicationCommunicator
from channels.db import database_sync_to_async
from channels.layers import get_channel_layer
from django.contrib.auth.models import AnonymousUser
from django.test import Client
from django.utils import timezone

from rounds import broadcast, services
from rounds.consumers import RoundProgressConsumer, RoundsOverviewConsumer
from rounds.models import Event, Round, Update
from rounds.services import live
from rounds.services.dashboard import versions_record_update_norms
from tests.factories import (
    MerchantFactory,
    ViewerFactory,
    make_fl_model,
    make_open_round,
    small_weights,
    submit_update,
    token_for,
)

pytestmark = pytest.mark.django_db

IN_MEMORY = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}


@pytest.fixture
def viewer():
    return ViewerFactory()


@pytest.fixture
def viewer_client(viewer) -> Client:
    client = Client(enforce_csrf_checks=True)
    client.force_login(viewer)
    return client


@pytest.fixture
def channel_layer(settings):
    settings.CHANNEL_LAYERS = IN_MEMORY
    return get_channel_layer()


def _download(merchant, fl_round, **headers):
    client = Client(HTTP_AUTHORIZATION=f"Bearer {token_for(merchant)}")
    version = fl_round.base_version
    response = client.get(
        f"/api/v1/models/{version.fl_model.slug}/versions/{version.number}/weights", **headers
    )
    response.getvalue()  # reads the file to the end, which closes it
    return response


def _statuses(fl_round: Round) -> dict[str, str]:
    return {row["merchant"]: row["status"] for row in live.round_participants(fl_round)}


def _row(html: str, slug: str) -> str:
    match = re.search(rf'<tr data-merchant="{slug}" data-status="(\w+)">', html)
    assert match, f"no row for {slug}"
    return match.group(1)


@pytest.fixture
def four_merchants():
    return [MerchantFactory(slug=f"shop-{name}") for name in ("a", "b", "c", "d")]


@pytest.fixture
def busy_round(four_merchants, aggregate_calls):
    """An open round (quorum 2, target 4) where a submitted, b was rejected, c downloaded and
    d has done nothing yet."""
    a, b, c, _ = four_merchants
    fl_round = make_open_round(min_updates=2, target_updates=4)
    assert _download(a, fl_round).status_code == 200
    submit_update(fl_round, a, num_examples=30, metrics={"loss": 0.5})
    rejected = submit_update(fl_round, b, num_examples=5)
    Update.objects.filter(pk=rejected.pk).update(
        status=Update.Status.REJECTED, reason="norm far beyond the others"
    )
    assert _download(c, fl_round).status_code == 200
    fl_round.refresh_from_db()
    return fl_round


# --- per-merchant status, counts, the snapshot -----------------------------------------------


def test_each_participant_shows_invited_downloaded_submitted_or_rejected(busy_round):
    assert _statuses(busy_round) == {
        "shop-a": "submitted",
        "shop-b": "rejected",
        "shop-c": "downloaded",
        "shop-d": "invited",
    }
    assert live.round_counts(busy_round) == {
        "invited": 1,
        "downloaded": 1,
        "submitted": 1,
        "rejected": 1,
        "dropped": 0,
    }
    rows = {row["merchant"]: row for row in live.round_participants(busy_round)}
    assert rows["shop-b"]["reason"] == "norm far beyond the others"
    assert rows["shop-a"]["num_examples"] == 30
    assert rows["shop-a"]["downloaded_at"] and rows["shop-a"]["submitted_at"]
    assert rows["shop-d"]["activity_at"] is None


def test_participants_who_sent_nothing_are_dropped_when_the_round_ends(busy_round):
    services.rounds_tick(now=timezone.now() + timedelta(hours=1))  # deadline passes, quorum 2
    busy_round.refresh_from_db()
    assert busy_round.status == "failed"  # one accepted update is below the quorum
    assert _statuses(busy_round) == {
        "shop-a": "submitted",
        "shop-b": "rejected",
        "shop-c": "dropped",
        "shop-d": "dropped",
    }
    assert live.round_counts(busy_round)["dropped"] == 2


def test_the_list_holds_the_most_recently_active_first_and_is_capped(busy_round):
    rows = live.round_participants(busy_round, limit=2)
    assert [row["merchant"] for row in rows] == ["shop-c", "shop-b"]  # c downloaded last
    assert sum(live.round_counts(busy_round).values()) == 4  # counts cover everyone
    everyone = live.round_participants(busy_round)
    assert [row["merchant"] for row in everyone][-1] == "shop-d"  # idle ones last


def test_the_snapshot_has_the_round_counts_merchants_feed_and_result(busy_round):
    state = live.round_live(busy_round)
    assert set(state) == {"round", "counts", "merchants", "feed", "last_event_id", "result"}
    assert state["round"]["id"] == busy_round.pk and state["round"]["submitted"] == 1
    assert state["result"] is None
    kinds = [entry["kind"] for entry in state["feed"]]
    assert kinds[0] == "weights.downloaded" and kinds[-1] == "round.scheduled"  # newest first
    assert state["last_event_id"] == state["feed"][0]["id"]
    entry = state["feed"][0]
    assert set(entry) == {"id", "kind", "at", "actor", "merchant", "text"}
    assert entry["merchant"] == "shop-c" and entry["actor"] == "merchant:shop-c"
    assert entry["text"] == "shop-c downloaded the weights (v1)"


def test_changes_since_an_event_carry_only_the_new_entries_and_their_merchants(busy_round):
    after = live.round_live(busy_round)["last_event_id"]
    d = busy_round.participants.get(slug="shop-d")
    submit_update(busy_round, d, num_examples=7)
    changes = live.round_live_changes(busy_round, after_id=after, status_before="open")
    assert [e["kind"] for e in changes["feed"]] == ["update.accepted"]
    assert [(m["merchant"], m["status"]) for m in changes["merchants"]] == [("shop-d", "submitted")]
    assert changes["replace"] is False and changes["counts"]["submitted"] == 2
    closed = live.round_live_changes(busy_round, after_id=after, status_before="scheduled")
    assert closed["replace"] is True and len(closed["merchants"]) == 4


# --- the download record ----------------------------------------------------------------------


def test_a_download_is_recorded_once_per_merchant_and_round_and_broadcast(
    four_merchants, aggregate_calls, channel_layer, django_capture_on_commit_callbacks
):
    fl_round = make_open_round(min_updates=2)
    merchant = four_merchants[0]
    async_to_sync(channel_layer.group_add)(broadcast.round_group(fl_round.pk), "test-listener")
    with django_capture_on_commit_callbacks(execute=True):
        first = _download(merchant, fl_round)
    etag = first["ETag"]
    with django_capture_on_commit_callbacks(execute=True) as repeats:
        assert _download(merchant, fl_round).status_code == 200
        assert _download(merchant, fl_round, HTTP_IF_NONE_MATCH=etag).status_code == 304
    assert repeats == []  # nothing more to announce
    events = Event.objects.filter(kind="weights.downloaded", fl_round=fl_round)
    assert [(e.merchant, e.data) for e in events] == [(merchant, {"version": 1})]
    message = async_to_sync(channel_layer.receive)("test-listener")
    assert message["event"] == "weights.downloaded" and message["round"]["id"] == fl_round.pk


def test_a_download_outside_an_open_round_records_nothing(four_merchants, aggregate_calls):
    fl_round = make_open_round(min_updates=2)
    services.round_cancel(fl_round=fl_round)
    assert _download(four_merchants[0], fl_round).status_code == 200  # the version stays readable
    assert not Event.objects.filter(kind="weights.downloaded").exists()


# --- the round page in each status ------------------------------------------------------------


def test_an_open_round_page_shows_progress_marks_countdown_statuses_and_the_log(
    busy_round, viewer_client
):
    response = viewer_client.get(f"/rounds/{busy_round.pk}/")
    assert response.status_code == 200
    html = response.content.decode()
    assert '<progress id="round-progress" data-field="progress" max="4" value="1">' in html
    assert 'id="mark-quorum" style="left: 50.0%"' in html
    assert 'id="mark-target" style="left: 100%"' in html
    assert 'data-deadline="' + busy_round.deadline_at.isoformat() + '"' in html
    assert re.search(r'id="round-countdown"[^>]*>\s*(9|10)\s+minutes', html)
    assert '<meta http-equiv="refresh" content="5">' in html  # polling without JavaScript
    assert [_row(html, f"shop-{x}") for x in "abcd"] == [
        "submitted",
        "rejected",
        "downloaded",
        "invited",
    ]
    assert "norm far beyond the others" in html
    assert '<dd data-count="downloaded">1</dd>' in html
    log = html[html.index('id="event-log"') :]
    assert "shop-c downloaded the weights (v1)" in log
    assert "shop-a submitted an update (30 examples, loss 0.5)" in log
    assert 'id="version-result" class="card" hidden' in html
    assert f'data-ws-path="/ws/rounds/{busy_round.pk}/"' in html


def test_a_scheduled_round_page_says_when_it_opens(aggregate_calls, viewer_client):
    MerchantFactory()
    fl_model = make_fl_model()
    make_open_round(fl_model=fl_model, min_updates=1)  # running: the next one waits
    waiting = services.round_create(fl_model=fl_model, min_updates=1)
    assert waiting.status == "scheduled"
    html = viewer_client.get(f"/rounds/{waiting.pk}/").content.decode()
    assert "opens in" in html and "Participants are chosen when the round opens." in html
    assert '<meta http-equiv="refresh" content="5">' in html


def test_a_completed_round_page_shows_the_new_version_its_aggregation_and_metrics(
    four_merchants, aggregate_calls, viewer_client
):
    a, b, *_ = four_merchants
    fl_round = make_open_round(min_updates=2, target_updates=2)
    submit_update(fl_round, a, small_weights(1.0), num_examples=10, metrics={"loss": 0.4})
    submit_update(fl_round, b, small_weights(3.0), num_examples=30, metrics={"loss": 0.2})
    assert services.round_aggregate(round_id=fl_round.pk) == 2
    assert versions_record_update_norms() == 1  # beat, seconds later
    version = Round.objects.get(pk=fl_round.pk).result_version
    services.evaluation_submit(
        version=version, merchant=a, num_examples=100, metrics={"loss": 0.3, "auc": 0.7}
    )
    html = viewer_client.get(f"/rounds/{fl_round.pk}/").content.decode()
    assert 'class="status status-completed"' in html
    result = html[html.index('id="version-result"') : html.index("<h2>Participants")]
    assert "hidden" not in result.split(">")[0]
    assert "version v2" in result
    assert "update norm max" in result and "update norm mean" in result
    assert "0.2500" in result  # example-weighted training loss (0.4*10 + 0.2*30) / 40
    assert "0.3000" in result and "0.7000" in result  # held-out, from the evaluation
    assert "1 merchants evaluated" in result
    assert '<meta http-equiv="refresh"' not in html  # final: no more polling
    assert [_row(html, f"shop-{x}") for x in "abcd"] == [
        "submitted",
        "submitted",
        "dropped",
        "dropped",
    ]
    assert "Completed: version v2 from 2 updates" in html


def test_failed_and_cancelled_round_pages_say_so(four_merchants, aggregate_calls, viewer_client):
    failed = make_open_round(min_updates=2)
    services.rounds_tick(now=timezone.now() + timedelta(hours=1))
    html = viewer_client.get(f"/rounds/{failed.pk}/").content.decode()
    assert "status-failed" in html and "Deadline passed with 0 of 2 required updates." in html
    assert '<meta http-equiv="refresh"' not in html
    cancelled = make_open_round(min_updates=2)
    services.round_cancel(fl_round=cancelled)
    html = viewer_client.get(f"/rounds/{cancelled.pk}/").content.decode()
    assert "status-cancelled" in html and "Cancelled by system" in html
    assert _row(html, "shop-a") == "dropped"


def test_an_unknown_round_is_404(viewer_client):
    assert viewer_client.get("/rounds/999999/").status_code == 404


# --- the round list ---------------------------------------------------------------------------


def test_the_round_list_filters_by_model_and_status(four_merchants, aggregate_calls, viewer_client):
    alpha, beta = make_fl_model(slug="alpha"), make_fl_model(slug="beta")
    open_alpha = make_open_round(fl_model=alpha, min_updates=1)
    submit_update(open_alpha, four_merchants[0])  # target 1: aggregating
    cancelled_beta = make_open_round(fl_model=beta, min_updates=2)
    services.round_cancel(fl_round=cancelled_beta)
    open_beta = make_open_round(fl_model=beta, min_updates=2)

    def ids(query: str) -> list[int]:
        response = viewer_client.get(f"/rounds/{query}")
        assert response.status_code == 200
        return [int(i) for i in re.findall(r'data-round-id="(\d+)"', response.content.decode())]

    assert ids("") == [open_beta.pk, cancelled_beta.pk, open_alpha.pk]
    assert ids("?model=beta") == [open_beta.pk, cancelled_beta.pk]
    assert ids("?status=cancelled") == [cancelled_beta.pk]
    assert ids("?model=alpha&status=aggregating") == [open_alpha.pk]
    assert ids("?model=beta&status=completed") == []
    html = viewer_client.get("/rounds/?status=nonsense").content.decode()
    assert "The filter was ignored." in html and html.count('data-round-id="') == 3
    assert "1</span>/1" in viewer_client.get("/rounds/?model=alpha").content.decode()


def test_the_round_list_paginates_keeping_the_filters(
    four_merchants, aggregate_calls, viewer_client, monkeypatch
):
    monkeypatch.setattr("rounds.views.live.ROUNDS_PER_PAGE", 2)
    fl_model = make_fl_model(slug="paged")
    created = [services.round_create(fl_model=fl_model, min_updates=1) for _ in range(3)]
    first = viewer_client.get("/rounds/?model=paged").content.decode()
    assert first.count('data-round-id="') == 2 and "Page 1 of 2" in first
    assert 'href="?model=paged&amp;page=2"' in first
    second = viewer_client.get("/rounds/?model=paged&page=2").content.decode()
    assert re.findall(r'data-round-id="(\d+)"', second) == [str(created[0].pk)]
    assert viewer_client.get("/rounds/?page=banana").status_code == 200


# --- who may see it ---------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/rounds/", "/rounds/{id}/"])
def test_anonymous_users_and_merchant_tokens_are_sent_to_the_login_page(
    path, busy_round, four_merchants
):
    url = path.format(id=busy_round.pk)
    anonymous = Client().get(url)
    assert anonymous.status_code == 302 and anonymous["Location"].startswith("/accounts/login/")
    merchant = Client(HTTP_AUTHORIZATION=f"Bearer {token_for(four_merchants[0])}").get(url)
    assert merchant.status_code == 302 and merchant["Location"].startswith("/accounts/login/")


def test_viewers_and_operators_can_read_but_staff_without_a_role_cannot(
    busy_round, viewer_client, operator_client
):
    from tests.factories import OperatorFactory

    for client in (viewer_client, operator_client):
        assert client.get(f"/rounds/{busy_round.pk}/").status_code == 200
        assert client.get("/rounds/").status_code == 200
    nobody = Client()
    nobody.force_login(OperatorFactory(role="none"))
    assert nobody.get(f"/rounds/{busy_round.pk}/").status_code == 403


# --- the WebSocket feeds ----------------------------------------------------------------------


class WebsocketCommunicator(ApplicationCommunicator):
    """The ASGI WebSocket conversation of ``channels.testing.WebsocketCommunicator`` (whose
    package also imports Daphne, which flportal does not use), on asgiref's communicator."""

    def __init__(self, application, path: str) -> None:
        scope = {"type": "websocket", "path": path, "query_string": b"", "headers": []}
        super().__init__(application, scope)

    async def connect(self) -> bool:
        await self.send_input({"type": "websocket.connect"})
        return (await self.receive_output(2))["type"] == "websocket.accept"

    async def receive_json_from(self) -> dict:
        message = await self.receive_output(2)
        assert message["type"] == "websocket.send", message
        return json.loads(message["text"])

    async def disconnect(self) -> None:
        await self.send_input({"type": "websocket.disconnect", "code": 1000})
        await self.wait(2)


async def _connect(consumer, path: str, user, **route):
    communicator = WebsocketCommunicator(consumer.as_asgi(), path)
    communicator.scope["user"] = user
    communicator.scope["url_route"] = {"kwargs": route}
    return communicator, await communicator.connect()


# Consumers reach the database through channels' database_sync_to_async, which closes
# connections that are inside a transaction: these tests commit (transaction=True), so the
# broadcasts run on commit as in production.
live_db = pytest.mark.django_db(transaction=True)


@live_db
def test_the_round_feed_sends_a_snapshot_on_connect_then_changes(channel_layer, busy_round, viewer):
    d = busy_round.participants.get(slug="shop-d")

    @database_sync_to_async
    def submit() -> None:
        submit_update(busy_round, d, num_examples=9)

    async def scenario():
        path = f"/ws/rounds/{busy_round.pk}/"
        communicator, connected = await _connect(
            RoundProgressConsumer, path, viewer, round_id=busy_round.pk
        )
        assert connected
        snapshot = await communicator.receive_json_from()
        await submit()
        change = await communicator.receive_json_from()
        await communicator.disconnect()
        return snapshot, change

    snapshot, change = async_to_sync(scenario)()
    assert snapshot["event"] == "snapshot"
    assert snapshot["round"]["id"] == busy_round.pk and snapshot["counts"]["submitted"] == 1
    assert len(snapshot["merchants"]) == 4 and snapshot["feed"][0]["kind"] == "weights.downloaded"
    assert change["event"] == "update.accepted" and change["round"]["submitted"] == 2
    assert [e["text"] for e in change["feed"]] == ["shop-d submitted an update (9 examples)"]
    assert [(m["merchant"], m["status"]) for m in change["merchants"]] == [("shop-d", "submitted")]
    assert change["counts"]["invited"] == 0 and change["replace"] is False


@live_db
def test_the_round_feed_refuses_anonymous_users_and_unknown_rounds(
    channel_layer, busy_round, viewer
):
    async def scenario():
        _, anonymous = await _connect(
            RoundProgressConsumer, "/ws/rounds/1/", AnonymousUser(), round_id=busy_round.pk
        )
        _, unknown = await _connect(
            RoundProgressConsumer, "/ws/rounds/999999/", viewer, round_id=999999
        )
        return anonymous, unknown

    assert async_to_sync(scenario)() == (False, False)


@live_db
def test_the_overview_feed_sends_active_rounds_then_every_change_without_updates(
    channel_layer, busy_round, viewer
):
    async def scenario():
        communicator, connected = await _connect(RoundsOverviewConsumer, "/ws/rounds/", viewer)
        assert connected
        snapshot = await communicator.receive_json_from()
        await channel_layer.group_send(
            broadcast.OVERVIEW_GROUP,
            {"type": "round.event", "event": "round.opened", "round": {"id": 1, "status": "open"}},
        )
        relayed = await communicator.receive_json_from()
        await communicator.disconnect()
        _, anonymous = await _connect(RoundsOverviewConsumer, "/ws/rounds/", AnonymousUser())
        return snapshot, relayed, anonymous

    snapshot, relayed, anonymous = async_to_sync(scenario)()
    assert [r["id"] for r in snapshot["rounds"]] == [busy_round.pk]
    assert "updates" not in snapshot["rounds"][0]
    assert relayed == {"event": "round.opened", "round": {"id": 1, "status": "open"}}
    assert anonymous is False


def test_the_overview_group_gets_the_snapshot_without_its_update_list(
    busy_round, channel_layer, django_capture_on_commit_callbacks
):
    async_to_sync(channel_layer.group_add)(broadcast.OVERVIEW_GROUP, "overview-listener")
    async_to_sync(channel_layer.group_add)(broadcast.round_group(busy_round.pk), "page-listener")
    with django_capture_on_commit_callbacks(execute=True):
        broadcast.round_changed(services.round_snapshot(busy_round), event="round.opened")
    overview = async_to_sync(channel_layer.receive)("overview-listener")
    page = async_to_sync(channel_layer.receive)("page-listener")
    assert "updates" not in overview["round"] and len(page["round"]["updates"]) == 2
    assert overview["round"]["submitted"] == page["round"]["submitted"] == 1


def test_operators_get_a_cancel_button_and_viewers_do_not(
    busy_round, operator_client, viewer_client
):
    page = operator_client.get(f"/rounds/{busy_round.pk}/").content.decode()
    assert 'id="cancel-round"' in page
    assert f'action="/rounds/{busy_round.pk}/cancel/"' in page
    assert (
        'id="cancel-round"' not in viewer_client.get(f"/rounds/{busy_round.pk}/").content.decode()
    )
    listing = operator_client.get("/rounds/").content.decode()
    assert 'id="schedule-round-link"' in listing
    assert 'id="schedule-round-link"' not in viewer_client.get("/rounds/").content.decode()
    response = operator_client.post(
        f"/rounds/{busy_round.pk}/cancel/", {"next": f"/rounds/{busy_round.pk}/"}
    )
    assert response.status_code == 302
    busy_round.refresh_from_db()
    assert busy_round.status == "cancelled"
    page = operator_client.get(f"/rounds/{busy_round.pk}/").content.decode()
    assert 'id="cancel-round"' not in page
