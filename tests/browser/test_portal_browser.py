"""The operator portal in a real browser: Chromium, driven by Playwright, against uvicorn, a
Celery worker and beat; merchants take part through the SDK over HTTP. Screenshots of each key
step go to ``$FLPORTAL_ARTIFACTS/screenshots``."""

from __future__ import annotations

import json
import re
import threading
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import safetensors.numpy
from playwright.sync_api import Page, expect

from clients.sdk import FlportalClient
from clients.sdk.cli import run_merchant
from clients.sdk.models import make_trainer
from rounds import services
from rounds.models import FederatedModel, Round
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


def mark_document(page: Page) -> None:
    """Tag the loaded document; a reload or navigation would lose the tag."""
    page.evaluate("window.__flportalNoReload = true")


def assert_not_reloaded(page: Page) -> None:
    assert page.evaluate("window.__flportalNoReload === true"), "the page was reloaded"


def csrf_headers(page: Page, base_url: str) -> dict[str, str]:
    token = next(c["value"] for c in page.context.cookies() if c["name"] == "csrftoken")
    return {"X-CSRFToken": token, "Referer": base_url + "/"}


def register_merchant_and_issue_token(page: Page, shot: Any) -> str:
    """Merchants page: register a shop, approve it, issue a token and read it once."""
    page.goto("/merchants/")
    page.get_by_role("link", name="Register a merchant").click()
    page.get_by_label("Name").fill("Corner Shop")
    page.get_by_label("Slug").fill("corner-shop")
    page.get_by_label("Category").fill("grocery")
    page.get_by_label("Region").fill("eu-west")
    shot(page, "register-merchant")
    page.get_by_role("button", name="Register").click()
    expect(page).to_have_url(re.compile(r"/merchants/corner-shop/$"))
    expect(page.locator("#merchant-status")).to_contain_text("Pending")
    page.get_by_role("button", name="Approve").click()
    expect(page.locator("#merchant-status")).to_contain_text("Active")
    shot(page, "merchant-approved")

    page.get_by_label("Label").fill("corner shop server")
    page.get_by_role("button", name="Issue token").click()
    plaintext = page.locator("#token-plaintext").inner_text().strip()
    assert plaintext.startswith("flp_"), plaintext
    shot(page, "token-issued")
    page.get_by_role("link", name="Done, back to Corner Shop").click()
    expect(page.locator("#tokens tbody tr")).to_have_count(1)
    assert plaintext not in page.content(), "the token was shown a second time"
    return plaintext


def create_model(page: Page, shot: Any) -> str:
    """Models page: a re-order propensity model from its template; version 1 is made for us."""
    page.goto("/models/")
    page.get_by_role("link", name="New model").click()
    form = page.locator("#model-from-template")
    form.get_by_label("Name").fill("Re-order propensity")
    form.get_by_label("Slug").fill("propensity")
    form.locator("#template-purchase_propensity").check()
    form.locator('[data-dims-for="purchase_propensity"]').get_by_label("n_features").fill(
        str(N_FEATURES)
    )
    shot(page, "create-model")
    form.get_by_role("button", name="Create from template").click()
    expect(page).to_have_url(re.compile(r"/models/propensity/$"))
    expect(page.locator("#version-lineage #version-1")).to_be_visible()
    shot(page, "model-created")
    return "propensity"


def schedule_round(page: Page, merchants: int, shot: Any) -> int:
    """Scheduling page, from the model: open a round now for all active merchants that
    closes as soon as every one of them has sent its update."""
    page.get_by_role("link", name="Schedule a round").click()
    expect(page.get_by_label("Model")).to_have_value("propensity")
    page.get_by_label("Open now").check()
    page.get_by_label("Quorum (minimum updates)").fill(str(merchants))
    page.get_by_label("Target updates").fill(str(merchants))
    page.locator("#id_duration").fill("2")
    page.get_by_label("All active merchants").check()
    shot(page, "schedule-round")
    page.get_by_role("button", name="Schedule").click()
    expect(page).to_have_url(re.compile(r"/rounds/\d+/$"))
    expect(page.locator("#round-participants")).to_have_text(str(merchants))
    return int(page.url.rstrip("/").rsplit("/", 1)[1])


def open_dashboard(page: Page) -> None:
    """The dashboard, before the round completes: the model's charts have no point yet."""
    page.goto("/")
    expect(page.locator("#live-connection")).to_have_attribute("data-state", "live")
    mark_document(page)
    expect(page.locator("#charts-propensity")).to_be_visible()
    expect(page.locator("#chart-propensity-quality")).not_to_have_attribute("data-points", "1")


def check_dashboard_after_the_round(page: Page, shot: Any) -> None:
    """Without a reload: the new version is listed and each chart gained its point."""
    latest = page.locator('#latest-versions tr[data-model="propensity"][data-version="2"]')
    expect(latest).to_be_visible()
    expect(latest.locator("td").nth(3)).to_have_text(re.compile(r"^0\.\d{4}$"))  # train loss
    expect(page.locator("#stat-latest-version")).to_have_text("v2")
    for chart in ("quality", "participation", "norms"):
        expect(page.locator(f"#chart-propensity-{chart}")).to_have_attribute("data-points", "1")
    expect(page.locator("#chart-propensity-quality canvas")).to_be_visible()
    assert_not_reloaded(page)
    shot(page, "dashboard-new-point")


def check_version_history_and_download(page: Page, round_id: int, shot: Any) -> None:
    """Model page: v2 came from the round; it downloads as a safetensors file."""
    page.goto("/models/propensity/")
    row = page.locator("#version-lineage #version-2")
    expect(row).to_contain_text("#1")
    shot(page, "version-lineage")
    with page.expect_download() as download:
        page.locator("#download-v2").click()
    body = Path(download.value.path()).read_bytes()
    header = int.from_bytes(body[:8], "little")
    assert set(json.loads(body[8 : 8 + header])) >= {"weight", "bias"}


def schedule_and_cancel_a_series(page: Page, shot: Any) -> None:
    """Scheduling page: a series of two rounds an hour apart, then cancelled as a group."""
    page.goto("/rounds/new/?model=propensity")
    page.get_by_label("A recurring series").check()
    later = (datetime.now(UTC) + timedelta(hours=1)).strftime("%Y-%m-%d %H:%M")
    page.get_by_label("Opens at (UTC)").fill(later)
    page.get_by_label("Rounds in the series").fill("2")
    page.locator("#id_every").fill("1")
    page.locator("#id_every_unit").select_option("hours")
    page.get_by_label("Quorum (minimum updates)").fill("2")
    page.get_by_role("button", name="Schedule").click()
    expect(page).to_have_url(re.compile(r"/rounds/series/[0-9a-f-]+/$"))
    statuses = page.locator("#series-rounds tbody tr .status")
    expect(statuses).to_have_text(["Scheduled", "Scheduled"])
    shot(page, "series-scheduled")
    page.get_by_role("button", name=re.compile("Cancel the 2 scheduled")).click()
    expect(statuses).to_have_text(["Cancelled", "Cancelled"])
    shot(page, "series-cancelled")


def watch_merchants_submit(
    page: Page, base_url: str, round_id: int, merchants: list[tuple[str, str]], shot: Any
) -> None:
    """The round page advances without a reload as each merchant's client submits."""
    expect(page).to_have_url(re.compile(rf"/rounds/{round_id}/$"))
    connection = page.locator("#live-connection")
    expect(connection).to_have_attribute("data-state", "live")
    mark_document(page)
    progress = page.locator("#round-progress")
    log = page.locator("#event-log li")
    expect(progress).to_have_js_property("value", 0)
    expect(log.filter(has_text="Opened: 3 merchants invited")).to_have_count(1)
    shot(page, "round-open")

    for index, (slug, token) in enumerate(merchants):
        client = threading.Thread(target=take_part, args=(base_url, token, index), daemon=True)
        client.start()
        client.join(timeout=60)
        assert not client.is_alive(), f"{slug}'s client did not send its update"
        expect(progress).to_have_js_property("value", index + 1)
        expect(page.locator("#round-submitted")).to_have_text(str(index + 1))
        row = page.locator(f'#participants tr[data-merchant="{slug}"]')
        expect(row).to_have_attribute("data-status", "submitted")
        expect(log.filter(has_text=f"{slug} submitted an update")).to_have_count(1)
        shot(page, f"submitted-{index + 1}")

    expect(page.locator("#round-status")).to_have_text("completed")
    expect(page.locator("#version-result")).to_be_visible()
    expect(page.locator("#result-version")).to_have_text("version v2")
    expect(log.filter(has_text="Completed: version v2 from 3 updates")).to_have_count(1)
    expect(connection).to_have_attribute("data-state", "live")
    assert_not_reloaded(page)
    shot(page, "round-completed")


def test_an_operator_runs_a_round_from_the_browser_and_watches_it_live(new_page, live_stack, shot):
    operator = user_with_password(OperatorFactory)
    others = [MerchantFactory(name=f"Shop {i}", slug=f"shop-{i}") for i in range(2)]
    merchants = [(m.slug, token_for(m)) for m in others]
    page = new_page()

    log_in(page, operator.username)
    shot(page, "logged-in")
    merchants.append(("corner-shop", register_merchant_and_issue_token(page, shot)))
    create_model(page, shot)
    round_id = schedule_round(page, len(merchants), shot)
    dashboard = page.context.new_page()
    open_dashboard(dashboard)
    shot(dashboard, "dashboard-before")

    watch_merchants_submit(page, live_stack, round_id, merchants, shot)
    check_dashboard_after_the_round(dashboard, shot)
    check_version_history_and_download(page, round_id, shot)
    schedule_and_cancel_a_series(page, shot)

    fl_round = Round.objects.select_related("result_version").get(pk=round_id)
    assert fl_round.result_version.number == 2
    assert fl_round.result_version.metrics["num_examples"] == 3 * 150


def test_an_operator_manages_merchants_tokens_models_and_rounds_from_the_browser(
    new_page, live_stack, shot, tmp_path
):
    operator = user_with_password(OperatorFactory)
    fashion = MerchantFactory(name="Fresh Fashion", slug="fresh-fashion", category="fashion")
    MerchantFactory(name="Green Grocer", slug="green-grocer")
    weights = tmp_path / "initial.safetensors"
    safetensors.numpy.save_file(
        {"weight": np.zeros(3, np.float32), "bias": np.zeros(1, np.float32)}, str(weights)
    )
    page = new_page()
    log_in(page, operator.username)

    # Merchants: search, suspend and reactivate, issue a token and revoke it.
    page.goto("/merchants/")
    page.get_by_label("Search name, slug or email").fill("fresh")
    page.get_by_role("button", name="Filter").click()
    expect(page.locator("#merchants tbody tr")).to_have_count(1)
    expect(page.locator('#merchants tr[data-slug="fresh-fashion"]')).to_be_visible()
    shot(page, "merchant-search")
    page.get_by_role("link", name="Fresh Fashion").click()
    page.get_by_role("button", name="Suspend").click()
    expect(page.locator("#merchant-status")).to_contain_text("Suspended")
    page.get_by_role("button", name="Reactivate").click()
    expect(page.locator("#merchant-status")).to_contain_text("Active")
    page.get_by_label("Label").fill("old server")
    page.get_by_role("button", name="Issue token").click()
    expect(page.locator("#token-plaintext")).to_contain_text("flp_")
    page.get_by_role("link", name="Done, back to Fresh Fashion").click()
    token_row = page.locator("#tokens tbody tr").filter(has_text="old server")
    token_row.get_by_role("button", name=re.compile("Revoke")).click()
    expect(token_row).to_contain_text("revoked")
    shot(page, "token-revoked")

    # Models: from uploaded weights, then FedProx with mu in the settings.
    page.goto("/models/new/")
    form = page.locator("#model-from-upload")
    form.get_by_label("Name").fill("Uploaded model")
    form.get_by_label("Slug").fill("uploaded")
    form.get_by_label("Initial weights (.safetensors)").set_input_files(str(weights))
    form.get_by_role("button", name="Upload and create").click()
    expect(page).to_have_url(re.compile(r"/models/uploaded/$"))
    expect(page.locator("#version-lineage #version-1")).to_be_visible()
    page.get_by_role("link", name="Settings", exact=True).click()
    page.get_by_label(re.compile(r"^Strategy")).select_option("fedprox")
    page.locator('[data-params-for="fedprox"]').get_by_label("mu").fill("0.05")
    shot(page, "model-settings")
    page.get_by_role("button", name="Save settings").click()
    expect(page).to_have_url(re.compile(r"/models/uploaded/$"))
    expect(page.locator("#model-strategy")).to_contain_text("mu=0.05")

    # Rounds: one scheduled for later, cancelled from the model page.
    page.get_by_role("link", name="Schedule a round").click()
    page.get_by_label("At a time").check()
    later = (datetime.now(UTC) + timedelta(hours=2)).strftime("%Y-%m-%d %H:%M")
    page.get_by_label("Opens at (UTC)").fill(later)
    page.get_by_label("Quorum (minimum updates)").fill("1")
    page.get_by_role("button", name="Schedule").click()
    expect(page.locator("#round-status")).to_have_text("scheduled")
    page.goto("/models/uploaded/")
    page.get_by_role("button", name="Cancel round 1").click()
    expect(page.locator("#model-rounds tbody tr .status").first).to_have_text("Cancelled")
    shot(page, "round-cancelled")

    # Audit log: this merchant's history, each action with its operator.
    page.goto("/audit/")
    page.get_by_role("textbox", name="Merchant").fill("fresh-fashion")
    page.get_by_role("button", name="Filter").click()
    rows = page.locator("#events tbody tr")
    expect(rows.filter(has_text="token.revoked")).to_have_count(1)
    expect(rows.filter(has_text="token.issued")).to_have_count(1)
    expect(rows.filter(has_text=operator.username)).to_have_count(rows.count())
    shot(page, "audit-merchant")

    fashion.refresh_from_db()
    assert fashion.status == "active"
    assert fashion.tokens.get(label="old server").revoked_at is not None
    fl_model = FederatedModel.objects.get(slug="uploaded")
    assert (fl_model.strategy, fl_model.strategy_params["mu"]) == ("fedprox", 0.05)
    assert list(fl_model.rounds.values_list("status", flat=True)) == ["cancelled"]


def portal_pages(page: Page) -> list[str]:
    """The portal's own pages in the header's navigation (not the admin or the API docs)."""
    hrefs = page.locator("header nav a").evaluate_all("links => links.map(a => a.pathname)")
    return [h for h in dict.fromkeys(hrefs) if not h.startswith(("/admin", "/api"))]


def test_a_viewer_reads_every_page_but_has_no_actions_and_a_forced_post_is_refused(
    new_page, live_stack, shot
):
    viewer = user_with_password(ViewerFactory)
    merchant = MerchantFactory(status="pending")
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
    pages = portal_pages(page)
    assert {"/merchants/", "/rounds/"} <= set(pages), pages
    for path in [*pages, f"/merchants/{merchant.slug}/", f"/rounds/{fl_round.pk}/"]:
        response = page.goto(path)
        assert response is not None and response.status == 200, path
        expect(page.locator("main form[method=post i]")).to_have_count(0)
        name = path.strip("/").replace("/", "-") or "dashboard"
        shot(page, f"viewer-{name}")

    headers = csrf_headers(page, live_stack)
    approve = page.request.post(
        f"/merchants/{merchant.slug}/status/",
        form={"status": "active", "csrfmiddlewaretoken": headers["X-CSRFToken"]},
        headers={"Referer": headers["Referer"]},
    )
    assert approve.status == 403
    cancel = page.request.post(f"/api/v1/operator/rounds/{fl_round.pk}/cancel", headers=headers)
    assert cancel.status == 403
    merchant.refresh_from_db()
    fl_round.refresh_from_db()
    assert (merchant.status, fl_round.status) == ("pending", "open")
