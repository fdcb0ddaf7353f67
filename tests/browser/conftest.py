"""Browser tests: Playwright drives Debian's Chromium (``/usr/bin/chromium``, never a downloaded
browser) against the real stack: uvicorn, a Celery worker and beat, started once per module on
the test database and Redis, and stopped before other tests start their own stacks on the same
Redis. Screenshots go to ``$FLPORTAL_ARTIFACTS/screenshots`` (default
``var/test-artifacts/screenshots``).

Without Chromium the tests skip on a developer's machine and fail in CI (``CI`` set), so a CI
machine that lost its browser cannot pass quietly."""

from __future__ import annotations

import importlib.util
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings
from django.db import connections
from django.test import override_settings

from tests.test_e2e import running_stack

CHROMIUM_FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
VIEWPORT = {"width": 1280, "height": 900}
TIMEOUT_MS = 15_000


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() not in ("", "0", "false", "no")


def chromium_path() -> str | None:
    found = os.environ.get("FLPORTAL_CHROMIUM") or shutil.which("chromium")
    return found if found and os.access(found, os.X_OK) else None


def artifacts_dir() -> Path:
    return Path(os.environ.get("FLPORTAL_ARTIFACTS") or settings.BASE_DIR / "var/test-artifacts")


def executable_or_skip() -> str:
    """Chromium's path; without it (or without playwright) skip, or fail in CI."""
    executable = chromium_path()
    reason = None
    if executable is None:
        reason = "Chromium not found (neither FLPORTAL_CHROMIUM nor `chromium` on PATH)"
    elif importlib.util.find_spec("playwright") is None:
        reason = "the Python package playwright is not installed (the dev extra has it)"
    if reason is None:
        return executable
    if in_ci():
        pytest.fail(f"{reason}; CI must run the browser tests (.ci/run installs Chromium)")
    pytest.skip(f"{reason}; `apt-get install chromium` to run the browser tests")


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Any:
    """Remember each phase's outcome on the item, so fixtures can screenshot a failure."""
    report = yield
    setattr(item, f"report_{report.when}", report)
    return report


@pytest.fixture(scope="session")
def screenshots() -> Path:
    folder = artifacts_dir() / "screenshots"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    return folder


@pytest.fixture(scope="module")
def live_stack(django_db_setup: None, django_db_blocker: Any, tmp_path_factory) -> Iterator[str]:
    """uvicorn + Celery worker + beat on the test database, shared by the browser tests."""
    executable_or_skip()
    folder = tmp_path_factory.mktemp("browser-stack")
    with django_db_blocker.unblock(), override_settings(MEDIA_ROOT=folder / "media"):
        with running_stack(folder) as url:
            yield url


@pytest.fixture(autouse=True)
def _media_root(live_stack: str) -> Iterator[None]:
    """The servers and this process share the stack's media folder (overrides the per-test
    folder of tests/conftest.py: the server processes outlive a test)."""
    yield


class Shots:
    """Numbered full-page screenshots of one test: ``01-login.png``, ``02-merchants.png``..."""

    def __init__(self, folder: Path, prefix: str) -> None:
        self.folder = folder
        self.prefix = prefix
        self.count = 0
        self.taken: list[Path] = []

    def __call__(self, page: Any, name: str) -> Path:
        self.count += 1
        path = self.folder / f"{self.prefix}-{self.count:02d}-{name}.png"
        page.screenshot(path=str(path), full_page=True)
        self.taken.append(path)
        return path


@pytest.fixture
def shot(request: pytest.FixtureRequest, screenshots: Path) -> Shots:
    return Shots(screenshots, request.node.name.removeprefix("test_")[:40])


@pytest.fixture
def new_page(
    request: pytest.FixtureRequest,
    monkeypatch: pytest.MonkeyPatch,
    live_stack: str,
    screenshots: Path,
) -> Iterator[Any]:
    """``new_page()`` opens a page in a fresh browser context (own cookies) on the live stack.

    Chromium starts at the first call, so a test makes its data before: Playwright's sync API
    keeps an event loop registered in this thread while the browser runs, so Django takes the
    thread for async code. The loop never runs during our calls (it waits in a greenlet), so
    the ORM is safe here and DJANGO_ALLOW_ASYNC_UNSAFE says so; broadcasts from this process
    (async_to_sync) would be dropped, so once the browser runs act through the pages and use
    the ORM only to check.
    Uncaught JavaScript errors fail the test; a failed test leaves a screenshot of each page.
    """
    from playwright.sync_api import expect, sync_playwright

    executable = executable_or_skip()
    expect.set_options(timeout=TIMEOUT_MS)
    driver: list[Any] = []
    contexts: list[Any] = []
    errors: list[str] = []

    def open_page() -> Any:
        if not driver:
            monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "1")
            playwright = sync_playwright().start()
            driver.append(playwright)
            # Playwright gives every launch a fresh temporary --user-data-dir; adds --headless.
            driver.append(
                playwright.chromium.launch(
                    executable_path=executable, headless=True, args=CHROMIUM_FLAGS
                )
            )
        context = driver[1].new_context(base_url=live_stack, viewport=VIEWPORT)
        context.set_default_timeout(TIMEOUT_MS)
        contexts.append(context)
        page = context.new_page()
        page.on("pageerror", lambda exc: errors.append(f"{page.url}: {exc}"))
        return page

    yield open_page
    report = getattr(request.node, "report_call", None)
    try:
        for index, context in enumerate(contexts):
            if report is not None and report.failed:
                for page in context.pages:
                    name = f"FAILED-{request.node.name[:40]}-{index}.png"
                    page.screenshot(path=str(screenshots / name), full_page=True)
            context.close()
    finally:
        if driver:
            # While the loop is registered, Django keeps this thread's connection per context
            # (asgiref Local): close it now, or it outlives the test and blocks the teardown.
            connections.close_all()
            driver[1].close()
            driver[0].stop()
    assert not errors, f"JavaScript errors: {errors}"
