"""End to end on the real stack: the ASGI server (uvicorn) and a Celery worker and beat run as
separate processes against the same database and Redis as this test; three merchants take part
through the SDK over HTTP; an operator's browser session watches the round over a WebSocket."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import threading
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import redis
import websockets
from django.conf import settings
from django.db import connection
from django.test import Client

from clients.sdk import FlportalClient, TrainResult, codec
from clients.sdk.cli import run_merchant
from flportal.processes import ProcessGroup, free_port, wait_http
from rounds import aggregation, artifacts, services
from rounds.models import Round
from tests.factories import MerchantFactory, OperatorFactory, make_fl_model, token_for

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True), pytest.mark.timeout(240)]

UPLOAD_LIMIT = 256 * 1024
TENSORS = [
    {"name": "dense.bias", "shape": [8], "dtype": "float32"},
    {"name": "dense.weight", "shape": [32, 8], "dtype": "float32"},
]


def database_url() -> str:
    """The URL of the test database this process is using, for the server processes."""
    db = connection.settings_dict
    if db["ENGINE"] == "django.db.backends.sqlite3":
        return f"sqlite:///{Path(db['NAME']).resolve()}"
    user = db["USER"] or ""
    password = f":{db['PASSWORD']}" if db.get("PASSWORD") else ""
    auth = f"{user}{password}@" if user else ""
    return f"postgres://{auth}{db['HOST'] or '127.0.0.1'}:{db['PORT'] or 5432}/{db['NAME']}"


@contextlib.contextmanager
def running_stack(tmp_path: Path, **extra_env: str) -> Iterator[str]:
    """Start web, worker and beat; yield the base URL; stop them all afterwards."""
    redis.Redis.from_url(settings.REDIS_URL).flushdb()  # no stale tasks from earlier runs
    port = free_port()
    env = dict(os.environ)
    env.update(
        DATABASE_URL=database_url(),
        REDIS_URL=settings.REDIS_URL,
        MEDIA_ROOT=str(settings.MEDIA_ROOT),
        SECRET_KEY=settings.SECRET_KEY,
        TOKEN_HASH_KEY=settings.TOKEN_HASH_KEY,
        DEBUG="1",
        ROUNDS_TICK_SECONDS="0.5",
        FLPORTAL_VAR_DIR=str(tmp_path / "var"),
        FLPORTAL_MAX_UPDATE_BYTES=str(UPLOAD_LIMIT),
        **extra_env,
    )
    group = ProcessGroup(env=env, log_dir=tmp_path / "logs")
    try:
        group.web(port)
        group.worker(concurrency=2)
        group.beat(tmp_path / "beat-schedule")
        wait_http(f"http://127.0.0.1:{port}/accounts/login/", timeout=60, group=group)
        yield f"http://127.0.0.1:{port}"
        group.check_alive()
    finally:
        group.stop()
        for log in sorted((tmp_path / "logs").glob("*.log")):
            text = log.read_text(errors="replace")
            assert "Traceback" not in text, f"{log.name}:\n{text[-3000:]}"


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[str]:
    with running_stack(tmp_path) as url:
        yield url


class RecordingTrainer:
    """A deterministic 'local training' that records exactly what it sent."""

    def __init__(self, shop: int) -> None:
        self.shop = shop
        self.sent: dict[int, tuple[dict[str, np.ndarray], int]] = {}

    def __call__(self, weights: Mapping[str, np.ndarray], hints: Mapping[str, Any]) -> TrainResult:
        rng = np.random.default_rng(100 * self.shop + int(hints["round"]))
        new = {
            name: (w + rng.normal(0, 0.1, w.shape)).astype(w.dtype) for name, w in weights.items()
        }
        examples = 50 * (self.shop + 1) + int(hints["round"])
        self.sent[int(hints["round"])] = (new, examples)
        return TrainResult(weights=new, num_examples=examples, metrics={"loss": 1.0 / examples})


def watch_round(
    url: str, session: str, round_id: int, events: list[dict[str, Any]], ready: threading.Event
) -> None:
    async def listen() -> None:
        ws_url = url.replace("http://", "ws://") + f"/ws/rounds/{round_id}/"
        headers = {"Cookie": f"sessionid={session}", "Origin": url}
        async with websockets.connect(ws_url, additional_headers=headers) as socket:
            ready.set()
            while True:
                message = json.loads(await asyncio.wait_for(socket.recv(), timeout=60))
                events.append(message)
                if message["event"] in {"round.completed", "round.failed"}:
                    return

    asyncio.run(listen())


def test_three_merchants_complete_two_rounds_and_each_version_is_the_weighted_average(stack):
    merchants = [MerchantFactory() for _ in range(3)]
    tokens = [token_for(m) for m in merchants]
    fl_model = make_fl_model(
        slug="e2e",
        tensors=TENSORS,
        init="random",
        training_hints={"epochs": 1, "learning_rate": 0.1},
    )
    first, second = (
        services.round_create(fl_model=fl_model, min_updates=3, duration_seconds=120)
        for _ in range(2)
    )
    assert (first.status, second.status) == ("open", "scheduled")

    browser = Client()
    browser.force_login(OperatorFactory())
    events: list[dict[str, Any]] = []
    ready = threading.Event()
    watcher = threading.Thread(
        target=watch_round,
        daemon=True,
        args=(stack, browser.cookies["sessionid"].value, first.pk, events, ready),
    )
    watcher.start()
    assert ready.wait(20), "the live page's WebSocket did not connect"

    trainers = [RecordingTrainer(shop) for shop in range(3)]
    results: list[int | BaseException] = []

    def merchant(index: int) -> None:
        try:
            with FlportalClient(stack, tokens[index]) as client:
                results.append(
                    run_merchant(client, trainers[index], max_rounds=2, poll_interval=0.1)
                )
        except BaseException as exc:  # surfaced below
            results.append(exc)

    threads = [threading.Thread(target=merchant, args=(i,)) for i in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert results == [2, 2, 2]

    deadline = time.monotonic() + 60
    while Round.objects.filter(pk__in=[first.pk, second.pk], status="completed").count() < 2:
        assert time.monotonic() < deadline, list(Round.objects.values("number", "status"))
        time.sleep(0.1)

    initial = services.version_latest(fl_model)
    assert initial is not None and initial.number == 3
    for fl_round in (first, second):
        fl_round.refresh_from_db()
        version = fl_round.result_version
        submissions = [t.sent[fl_round.number] for t in trainers]
        total = sum(n for _, n in submissions)
        for spec in TENSORS:
            name = spec["name"]
            expected = sum(w[name].astype(np.float64) * n for w, n in submissions) / total
            with artifacts.local_path(version.weights.name) as path:
                stored = codec.open_arrays(path)[name]
            np.testing.assert_allclose(stored, expected, rtol=1e-5, atol=1e-6)
        assert version.metrics["num_examples"] == total
        assert version.number == fl_round.number + 1

    # each round started from the previous round's result
    second.refresh_from_db()
    assert second.base_version.number == first.result_version.number

    watcher.join(timeout=30)
    kinds = [e["event"] for e in events]
    assert kinds[0] == "snapshot"
    assert kinds.count("update.accepted") == 2, kinds
    assert kinds[-2:] == ["round.aggregating", "round.completed"], kinds
    submitted = [e["round"]["submitted"] for e in events if e["event"] == "update.accepted"]
    assert submitted == [1, 2]
    assert events[-1]["round"]["result_version"] == first.result_version.number


def test_the_round_page_requires_login_and_renders_live_progress(stack):
    MerchantFactory()
    fl_model = make_fl_model(slug="page", init="zeros")
    fl_round = services.round_create(fl_model=fl_model, min_updates=1)
    anonymous = Client().get(f"/rounds/{fl_round.pk}/")
    assert anonymous.status_code == 302 and "/login" in anonymous["Location"]

    browser = Client()
    browser.force_login(OperatorFactory())
    page = browser.get(f"/rounds/{fl_round.pk}/")
    assert page.status_code == 200
    assert f'data-ws-path="/ws/rounds/{fl_round.pk}/"' in page.content.decode()

    async def rejected() -> int:
        ws_url = stack.replace("http://", "ws://") + f"/ws/rounds/{fl_round.pk}/"
        try:
            async with websockets.connect(ws_url, additional_headers={"Origin": stack}) as socket:
                await socket.recv()
        except websockets.ConnectionClosed as exc:
            return exc.rcvd.code if exc.rcvd else -1
        except websockets.InvalidStatus as exc:
            return exc.response.status_code
        return 0

    assert asyncio.run(rejected()) in {403, 4403}


def test_the_server_refuses_an_oversized_body_before_reading_it(stack):
    merchant = MerchantFactory()
    token = token_for(merchant)
    fl_model = make_fl_model(slug="big", init="zeros")
    fl_round = services.round_create(fl_model=fl_model, min_updates=1)
    url = f"{stack}/api/v1/rounds/{fl_round.pk}/update?num_examples=1"
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/octet-stream"}

    declared = httpx.put(url, headers=headers, content=b"x" * (UPLOAD_LIMIT + 65 * 1024))
    assert declared.status_code == 413
    assert declared.json()["error"] == "update_too_large"

    def chunks():  # no Content-Length: chunked transfer encoding
        for _ in range(8):
            yield b"x" * (64 * 1024)

    streamed = httpx.put(url, headers=headers, content=chunks())
    assert streamed.status_code == 413
    assert streamed.json()["error"] == "update_too_large"
    assert not fl_round.updates.exists()


def test_a_large_model_is_aggregated_by_a_chord_of_slices_equal_to_one_task(tmp_path):
    """Parallel slices in a real worker publish what the single-task computation gives."""
    tensors = [
        {"name": "emb", "shape": [300, 16], "dtype": "float32"},
        {"name": "head", "shape": [16], "dtype": "float32"},
    ]
    merchants = [MerchantFactory() for _ in range(4)]
    tokens = [token_for(m) for m in merchants]
    fl_model = make_fl_model(
        slug="chord",
        tensors=tensors,
        init="random",
        strategy="fedadam",
        strategy_params={"eta": 0.05, "clip_norm": 20.0},
    )
    with running_stack(
        tmp_path, FLPORTAL_PARALLEL_MIN_PARAMS="1000", FLPORTAL_AGGREGATION_SLICES="3"
    ) as url:
        fl_round = services.round_create(fl_model=fl_model, min_updates=4)
        rng = np.random.default_rng(3)
        for k, token in enumerate(tokens):
            weights = {
                t["name"]: rng.normal(k, 1.0, t["shape"]).astype(np.float32) for t in tensors
            }
            with FlportalClient(url, token) as client:
                client.upload_update(fl_round.pk, weights, num_examples=20 + k)
        deadline = time.monotonic() + 60
        while Round.objects.get(pk=fl_round.pk).status != "completed":
            assert time.monotonic() < deadline, Round.objects.values("status", "failure_reason")
            time.sleep(0.1)
        worker_log = (tmp_path / "logs" / "worker.log").read_text()

    assert worker_log.count("rounds.tasks.round_aggregate_slice") >= 3
    assert "rounds.tasks.round_aggregate_finish" in worker_log
    fl_round.refresh_from_db()
    version = fl_round.result_version
    updates = list(fl_round.updates.order_by("merchant_id"))
    with contextlib.ExitStack() as stack:
        arrays = [
            codec.open_arrays(stack.enter_context(artifacts.local_path(u.weights.name)))
            for u in updates
        ]
        base = codec.open_arrays(
            stack.enter_context(artifacts.local_path(fl_round.base_version.weights.name))
        )
        expected = aggregation.aggregate(
            "fedadam",
            fl_round.strategy_params,
            updates=arrays,
            weights=[u.num_examples for u in updates],
            current=base,
            state={},
        )
        published = codec.open_arrays(
            stack.enter_context(artifacts.local_path(version.weights.name))
        )
        for name in expected.weights:
            assert np.array_equal(published[name], expected.weights[name]), name
        state = codec.open_arrays(stack.enter_context(artifacts.local_path(version.state.name)))
        assert sorted(state) == sorted(expected.state)
    assert version.strategy == "fedadam" and version.aggregation["clipped"] >= 1
