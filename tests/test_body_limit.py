"""The ASGI body limit refuses oversized bodies before Django spools them (no database)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from flportal.body_limit import BodyLimitMiddleware


class RecordingApp:
    def __init__(self) -> None:
        self.bodies: list[bytes] = []
        self.called = False

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        self.called = True
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return  # Django gives up on a disconnected request without answering
            self.bodies.append(message.get("body", b""))
            if not message.get("more_body"):
                break
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})


def run(app: Any, headers: list[tuple[bytes, bytes]], chunks: list[bytes]) -> list[dict[str, Any]]:
    sent: list[dict[str, Any]] = []
    queue = [
        {"type": "http.request", "body": c, "more_body": i < len(chunks) - 1}
        for i, c in enumerate(chunks)
    ]

    async def receive() -> dict[str, Any]:
        return queue.pop(0) if queue else {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    asyncio.run(app({"type": "http", "headers": headers}, receive, send))
    return sent


def test_a_declared_length_over_the_limit_is_refused_before_the_app_runs():
    inner = RecordingApp()
    sent = run(BodyLimitMiddleware(inner, max_bytes=10), [(b"content-length", b"11")], [b"x" * 11])
    assert not inner.called
    assert sent[0]["status"] == 413
    assert json.loads(sent[1]["body"])["error"] == "update_too_large"


def test_a_chunked_body_that_overruns_the_limit_is_cut_off_and_answered_413():
    inner = RecordingApp()
    sent = run(BodyLimitMiddleware(inner, max_bytes=10), [], [b"x" * 6, b"x" * 6, b"x" * 6])
    assert inner.bodies == [b"x" * 6]  # the overrunning chunk never reached the app
    assert [m.get("status") for m in sent if m["type"] == "http.response.start"] == [413]


def test_a_body_within_the_limit_passes_through_untouched():
    inner = RecordingApp()
    sent = run(BodyLimitMiddleware(inner, max_bytes=10), [(b"content-length", b"10")], [b"x" * 10])
    assert inner.bodies == [b"x" * 10]
    assert sent[0]["status"] == 200
