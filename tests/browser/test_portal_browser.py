"""The operator portal in a real browser: Chromium, driven by Playwright, against uvicorn, a
Celery worker and beat; merchants take part through the SDK over HTTP. Screenshots of each key
step go to ``$FLPORTAL_ARTIFACTS/screenshots``."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
from playwright.sync_api import Locator, Page, expect

from clients.sdk import FlportalClient
from clients.sdk.cli import run_merchant
from clients.sdk.models import make_trainer
from rounds import services
from tests.factories import MerchantFactory, OperatorFactory, ViewerFactory, token_for

pytestmark = [
    pytest.mark.browser,
    pytest.mark.django_db(transaction=True),
    pytest.mark.timeout(180),
]

PASSWORD = "correct horse battery staple"
N_FEATURES = 4


@dataclass(frozen=True)
class ShopData:
    """A shop's customer-product features and whether the customer bought again."""

    x: np.ndarray
    y: np.ndarray


def shop_data(seed: int, rows: int = 200) -> tuple[ShopData, ShopData]:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((rows, N_FEATURES)).astype(np.float32)
    y = (x @ np.array([1.0, -0.5, 0.25, 0.0]) + rng.normal(0, 0.3, rows) > 0).astype(np.float32)
    split = rows * 3 // 4
    return ShopData(x[:split], y[:split]), ShopData(x[split:], y[split:])


def user_with_password(factory: Any) -> Any:
    user = factory()
    user.set_password(PASSWORD)
    user.save(update_fields=["password"])
    return user


def log_in(page: Page, username: str) -> None:
    """Through the login form, as a person would."""
    page.goto("/accounts/login/")
    page.get_by_label("Username").fill(username)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Log in").click()
    page.wait_for_load_state()
    assert "/accounts/login/" not in page.url, "login failed"


def take_part(base_url: str, token: str, seed: int) -> None:
    """One merchant's client: wait for its invitation, train locally, upload one update."""
    trainer = make_trainer("logreg", lambda: shop_data(seed), seed=seed, n_features=N_FEATURES)
    with FlportalClient(base_url, token) as client:
        sent = run_merchant(client, trainer, max_rounds=1, poll_interval=0.1)
    assert sent == 1


def wait_for_more(items: Locator, *, than: int) -> None:
    """Until the list shows more than ``than`` items (pushed, not reloaded)."""
    items.nth(than).wait_for(state="attached")


def mark_document(page: Page) -> None:
    """Tag the loaded document; a reload or navigation would lose the tag."""
    page.evaluate("window.__flportalNoReload = true")


def assert_not_reloaded(page: Page) -> None:
    assert page.evaluate("window.__flportalNoReload === true"), "the page was reloaded"


def test_operator_logs_in_and_watches_merchants_complete_a_round_live(new_page, live_stack, shot):
    operator = user_with_password(OperatorFactory)
    merchants = [MerchantFactory(name=f"Shop {i}", slug=f"shop-{i}") for i in range(3)]
    tokens = [token_for(m) for m in merchants]
    fl_model = services.fl_model_create_from_template(
        name="Re-order propensity",
        slug="propensity",
        template="purchase_propensity",
        dims={"n_features": N_FEATURES},
    )
    fl_round = services.round_create(fl_model=fl_model, min_updates=3, duration_seconds=120)
    page = new_page()

    log_in(page, operator.username)
    shot(page, "logged-in")

    page.goto(f"/rounds/{fl_round.pk}/")
    expect(page.locator("[data-connection]")).to_have_text("(live)")
    mark_document(page)
    progress = page.locator("[data-field=progress]")
    events = page.locator("[data-field=events] li")
    updates = page.locator("[data-field=updates] tr")
    expect(progress).to_have_js_property("value", 0)
    shot(page, "round-open")

    for index, (merchant, token) in enumerate(zip(merchants, tokens, strict=True)):
        logged = events.count()
        client = threading.Thread(target=take_part, args=(live_stack, token, index))
        client.start()
        client.join(timeout=60)
        expect(progress).to_have_js_property("value", index + 1)
        expect(page.locator("[data-field=submitted]")).to_have_text(str(index + 1))
        expect(updates.filter(has_text=merchant.slug)).to_have_count(1)
        wait_for_more(events, than=logged)
        shot(page, f"submitted-{index + 1}")

    expect(page.locator("[data-field=status]")).to_have_text("completed")
    expect(page.locator("[data-field=result_version]")).to_have_text("v2")
    expect(events.filter(has_text="round.completed")).to_have_count(1)
    assert_not_reloaded(page)
    shot(page, "round-completed")


def test_a_viewer_reads_the_pages_but_cannot_act(new_page, live_stack, shot):
    viewer = user_with_password(ViewerFactory)
    MerchantFactory()
    fl_model = services.fl_model_create_from_template(
        name="Viewer model",
        slug="viewer-model",
        template="purchase_propensity",
        dims={"n_features": 2},
    )
    fl_round = services.round_create(fl_model=fl_model, min_updates=1)
    page = new_page()

    log_in(page, viewer.username)
    for path in ("/rounds/", f"/rounds/{fl_round.pk}/"):
        response = page.goto(path)
        assert response is not None and response.status == 200, path
        actions = page.locator("main").locator("form[method=post], button")
        expect(actions).to_have_count(0)
    shot(page, "viewer-round")

    csrf = next(c["value"] for c in page.context.cookies() if c["name"] == "csrftoken")
    forced = page.request.post(
        f"/api/v1/operator/rounds/{fl_round.pk}/cancel",
        headers={"X-CSRFToken": csrf, "Referer": live_stack + "/"},
    )
    assert forced.status == 403
    fl_round.refresh_from_db()
    assert fl_round.status == "open"
