"""Start and stop the real processes of a deployment on one machine: the ASGI web server,
Celery worker and beat, and merchant clients. Used by the demo and the end-to-end tests."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

PYTHON = sys.executable
ROOT = Path(__file__).resolve().parent.parent


def free_port(preferred: int = 0) -> int:
    for candidate in (preferred, 0) if preferred else (0,):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind(("127.0.0.1", candidate))
            except OSError:
                continue
            return int(sock.getsockname()[1])
    raise RuntimeError("no free port")


@dataclass
class ProcessGroup:
    """Child processes that are stopped together, newest first, politely then firmly."""

    env: dict[str, str]
    log_dir: Path
    processes: list[tuple[str, subprocess.Popen[bytes]]] = field(default_factory=list)
    _logs: list[IO[bytes]] = field(default_factory=list)

    def start(
        self, name: str, argv: Sequence[str], *, stdout: int | None = None
    ) -> subprocess.Popen[bytes]:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log = (self.log_dir / f"{name}.log").open("wb")
        self._logs.append(log)
        process = subprocess.Popen(  # noqa: S603 - argv is built here, never from user input
            list(argv),
            cwd=ROOT,
            env=self.env,
            stdout=stdout if stdout is not None else log,
            stderr=log,
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # Ctrl-C reaches the parent, which stops children in order
        )
        self.processes.append((name, process))
        return process

    def web(self, port: int) -> subprocess.Popen[bytes]:
        return self.start(
            "web",
            [
                PYTHON,
                "-m",
                "uvicorn",
                "flportal.asgi:application",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--log-level",
                "warning",
                "--no-access-log",
            ],
        )

    def worker(self, *, concurrency: int = 2) -> subprocess.Popen[bytes]:
        return self.start(
            "worker",
            [
                PYTHON,
                "-m",
                "celery",
                "-A",
                "flportal.celery:app",
                "worker",
                "--loglevel",
                "INFO",
                "--concurrency",
                str(concurrency),
                "--without-gossip",
                "--without-mingle",
                "--without-heartbeat",
            ],
        )

    def beat(self, schedule: Path) -> subprocess.Popen[bytes]:
        return self.start(
            "beat",
            [
                PYTHON,
                "-m",
                "celery",
                "-A",
                "flportal.celery:app",
                "beat",
                "--loglevel",
                "WARNING",
                "--schedule",
                str(schedule),
            ],
        )

    def merchant(
        self,
        name: str,
        *,
        url: str,
        token: str,
        trainer: str,
        options: Mapping[str, object],
        poll: float = 0.2,
    ) -> subprocess.Popen[bytes]:
        argv = [
            PYTHON,
            "-m",
            "clients.sdk.cli",
            "--url",
            url,
            "--token",
            token,
            "run",
            "--trainer",
            trainer,
            "--poll",
            str(poll),
        ]
        for key, value in options.items():
            argv += ["--option", f"{key}={value}"]
        # each simulated shop keeps its secure-aggregation identity beside the logs (mode 0600)
        argv += ["--key-file", str(self.log_dir.parent / "merchant-keys" / f"{name}.key")]
        return self.start(name, argv)

    def check_alive(self) -> None:
        for name, process in self.processes:
            if process.poll() is not None:
                raise RuntimeError(
                    f"{name} exited with {process.returncode}; see {self.log_dir / (name + '.log')}"
                )

    def stop(self, timeout: float = 10.0) -> None:
        for _, process in reversed(self.processes):
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for _, process in reversed(self.processes):
            try:
                process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        for log in self._logs:
            log.close()
        self.processes.clear()
        self._logs.clear()


def wait_http(url: str, *, timeout: float = 30.0, group: ProcessGroup | None = None) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2):  # noqa: S310 - loopback URL we built
                return
        except urllib.error.HTTPError:
            return  # the server answered
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            if group is not None:
                group.check_alive()
            if time.monotonic() > deadline:
                raise TimeoutError(f"{url} did not answer within {timeout}s") from None
            time.sleep(0.1)
