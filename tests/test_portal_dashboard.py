"""The dashboard home (/) and its chart series (/dashboard/series/<model id>.json): active
rounds, merchants online, latest versions, and per model quality, participation, update norms
and privacy budget per round."""

from __future__ import annotations

import math
import re
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest
from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.conf import settings
from django.test import Client
from django.utils import timezone

from clients.models import Merchant
from rounds import aggregation, broadcast, services
from rounds.aggregation import core
from rounds.aggregation.norms import delta_norms, norm_summary
from rounds.models import Round, Update
from rounds.services.dashboard import (
    evaluation_means,
    merchants_online,
    model_series,
    versions_record_update_norms,
)
from rounds.services.privacy import privacy_report
from tests.factories import (
    MerchantFactory,
    OperatorFactory,
    ViewerFactory,
    make_fl_model,
    make_open_round,
    small_weights,
    submit_update,
    token_for,
)

DP = {"clip_norm": 1.0, "noise_multiplier": 1.0, "delta": 1e-5, "epsilon_budget": 8.0}
SQRT5 = math.sqrt(5.0)  # the L2 norm of a change of 1.0 in each of SMALL_TENSORS' 5 values


@pytest.fixture
def viewer_client() -> Client:
    client = Client(enforce_csrf_checks=True)
    client.force_login(ViewerFactory())
    return client


@pytest.fixture
def channel_layer(settings):
    settings.CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}
    return get_channel_layer()


@pytest.fixture
def history(aggregate_calls):
    """Model "propensity": round 1 completed (two updates, two evaluations), round 2 failed
    (one of two required updates), round 3 cancelled."""
    a, b = MerchantFactory(slug="shop-a"), MerchantFactory(slug="shop-b")
    fl_model = make_fl_model(slug="propensity")
    first = make_open_round(fl_model=fl_model, min_updates=2)
    submit_update(first, a, small_weights(1.0), num_examples=10, metrics={"loss": 0.4})
    submit_update(first, b, small_weights(3.0), num_examples=30, metrics={"loss": 0.2})
    assert services.round_aggregate(round_id=first.pk) == 2
    assert versions_record_update_norms() == 1  # what beat does seconds later
    version = fl_model.versions.get(number=2)
    for merchant, examples, metrics in (
        (a, 100, {"loss": 0.3, "accuracy": 0.8, "auc": 0.7}),
        (b, 300, {"loss": 0.5, "accuracy": 0.6, "auc": 0.9}),
    ):
        services.evaluation_submit(
            version=version, merchant=merchant, num_examples=examples, metrics=metrics
        )
    second = make_open_round(fl_model=fl_model, min_updates=2)
    submit_update(second, a, small_weights(2.0))
    services.rounds_tick(now=timezone.now() + timedelta(hours=1))
    third = make_open_round(fl_model=fl_model, min_updates=2)
    services.round_cancel(fl_round=third)
    assert [r.status for r in fl_model.rounds.order_by("number")] == [
        "completed",
        "failed",
        "cancelled",
    ]
    return fl_model


# --- the series -------------------------------------------------------------------------------


@pytest.mark.django_db
def test_the_series_has_one_column_per_finished_round(history):
    series = model_series(fl_model=history)
    assert series["model"] == "propensity"
    assert series["rounds"] == [1, 2]  # the cancelled round 3 released nothing
    assert series["status"] == ["completed", "failed"]
    assert series["version"] == [2, None]
    assert series["invited"] == [2, 2]
    assert series["submitted"] == [2, 1]
    assert series["train_loss"] == [pytest.approx((0.4 * 10 + 0.2 * 30) / 40), None]
    assert series["train_accuracy"] == [None, None]  # not reported with the updates
    assert series["eval_loss"] == [pytest.approx((0.3 * 100 + 0.5 * 300) / 400), None]
    assert series["eval_accuracy"] == [pytest.approx(0.65), None]
    assert series["eval_auc"] == [pytest.approx(0.85), None]
    assert series["norm_mean"] == [pytest.approx(2 * SQRT5, rel=1e-6), None]
    assert series["norm_max"] == [pytest.approx(3 * SQRT5, rel=1e-6), None]
    assert series["privacy"] == {"enabled": False}


@pytest.mark.django_db
def test_evaluation_means_agree_with_the_evaluation_summary(history):
    merchant = MerchantFactory()
    version = history.versions.get(number=2)
    version.produced_by.updates.create(  # a third contributor who reports no AUC
        merchant=merchant, weights="x", sha256="0" * 64, size_bytes=1, num_examples=1
    )
    services.evaluation_submit(
        version=version, merchant=merchant, num_examples=200, metrics={"loss": 0.9, "accuracy": 1}
    )
    (summary,) = services.evaluation_summary(fl_model=history)
    means = evaluation_means([version.pk])[version.pk]
    assert means["evaluators"] == summary["evaluators"] == 3
    assert means["num_examples"] == summary["num_examples"] == 600
    assert set(means["metrics"]) == {"loss", "accuracy"}  # not every evaluator reported auc
    for key, value in means["metrics"].items():
        assert value == pytest.approx(summary["metrics"][key])
    assert evaluation_means([]) == {}


@pytest.mark.django_db
def test_a_dp_model_charts_epsilon_spent_against_its_budget(aggregate_calls):
    merchants = MerchantFactory.create_batch(3)
    fl_model = make_fl_model(slug="dp", privacy=DP)
    fl_round = services.round_create(fl_model=fl_model, min_updates=3)
    for merchant in merchants:
        submit_update(fl_round, merchant)
    services.round_aggregate(round_id=fl_round.pk)
    assert versions_record_update_norms() == 0  # raw norms are not private: not recorded
    series = model_series(fl_model=fl_model)
    report = privacy_report(fl_model)
    assert series["privacy"] == {
        "enabled": True,
        "epsilon_budget": 8.0,
        "epsilon_spent": pytest.approx(report["epsilon_spent"]),
        "delta": 1e-5,
        "rounds": [1],
        "epsilon": [pytest.approx(report["ledger"][0]["epsilon_after"])],
    }
    # raw update norms are not private: a DP round does not record them
    assert series["norm_mean"] == [None] and series["version"] == [2]


@pytest.mark.django_db
def test_the_series_endpoint_returns_the_series_as_json(history, viewer_client):
    response = viewer_client.get(f"/dashboard/series/{history.pk}.json")
    assert response.status_code == 200
    assert response["Content-Type"] == "application/json"
    body = response.json()
    assert body["rounds"] == [1, 2] and body["submitted"] == [2, 1]
    assert body["eval_auc"][0] == pytest.approx(0.85)
    missing = viewer_client.get("/dashboard/series/999999.json")
    assert missing.status_code == 404 and missing.json()["error"] == "model_not_found"


# --- update norms, recorded where rounds are aggregated ----------------------------------------


def test_delta_norms_match_the_clipping_norms_in_every_precision(monkeypatch):
    rng = np.random.default_rng(7)
    reference = {
        "w": rng.standard_normal(300_000).astype(np.float32),
        "h": rng.standard_normal((3, 4)).astype(np.float16),
    }
    updates = [
        {
            name: (array + rng.standard_normal(array.shape)).astype(array.dtype)
            for name, array in reference.items()
        }
        for _ in range(5)
    ]
    expected = aggregation.update_norms(updates, reference=reference)
    np.testing.assert_allclose(delta_norms(updates, reference=reference), expected, rtol=1e-5)
    monkeypatch.setattr(core, "THREADED_MIN_VALUES", 0)  # split the chunks over threads
    single = delta_norms(updates, reference=reference, threads=1)
    assert np.array_equal(delta_norms(updates, reference=reference, threads=3), single)
    assert norm_summary([3.0, 1.0]) == {"update_norm_mean": 2.0, "update_norm_max": 3.0}
    assert norm_summary([]) == {}


@pytest.mark.django_db
def test_update_norms_are_recorded_after_publication_once_per_version(
    aggregate_calls, channel_layer, django_capture_on_commit_callbacks
):
    a, b = MerchantFactory.create_batch(2)
    fl_model = make_fl_model(strategy_params={"clip_norm": 5.0})
    single = make_open_round(fl_model=fl_model, min_updates=2)
    submit_update(single, a, small_weights(1.0))
    submit_update(single, b, small_weights(3.0))
    services.round_aggregate(round_id=single.pk)
    version = Round.objects.get(pk=single.pk).result_version
    assert "update_norm_mean" not in version.aggregation  # not on the way to publication
    async_to_sync(channel_layer.group_add)(broadcast.round_group(single.pk), "listener")
    with django_capture_on_commit_callbacks(execute=True):
        assert versions_record_update_norms() == 1
    version.refresh_from_db()
    assert version.aggregation["update_norm_mean"] == pytest.approx(2 * SQRT5, rel=1e-6)
    assert version.aggregation["update_norm_max"] == pytest.approx(3 * SQRT5, rel=1e-6)
    assert version.aggregation["clipped"] == 1  # what the strategy recorded is kept
    message = async_to_sync(channel_layer.receive)("listener")
    assert message["event"] == "version.norms"
    assert message["round"]["aggregation"]["update_norm_mean"] == pytest.approx(2 * SQRT5)
    assert versions_record_update_norms() == 0  # once

    sliced = make_open_round(fl_model=fl_model, min_updates=2)
    submit_update(sliced, a, small_weights(3.0))
    submit_update(sliced, b, small_weights(5.0))
    plan = services.round_aggregation_plan(round_id=sliced.pk, min_params=1, slices=2)
    parts = [
        services.round_aggregate_slice(round_id=sliced.pk, spans=spans, scales=plan["scales"])
        for spans in plan["spans"]
    ]
    services.round_aggregate_finish(round_id=sliced.pk, plan=plan, parts=parts)
    Update.objects.filter(fl_round=sliced, merchant=b).first().weights.delete(save=False)
    assert versions_record_update_norms() == 1
    info = Round.objects.get(pk=sliced.pk).result_version.aggregation
    assert info["update_norm_mean"] is None and info["update_norm_max"] is None  # unreadable
    assert versions_record_update_norms() == 0  # and not retried for ever


# --- the page ---------------------------------------------------------------------------------


@pytest.mark.django_db
def test_the_dashboard_shows_active_rounds_merchants_online_versions_and_charts(
    history, viewer_client
):
    now = timezone.now()
    Merchant.objects.filter(slug="shop-a").update(last_seen_at=now - timedelta(minutes=1))
    Merchant.objects.filter(slug="shop-b").update(last_seen_at=now - timedelta(minutes=30))
    running = make_open_round(fl_model=history, min_updates=1, target_updates=2)
    submit_update(running, Merchant.objects.get(slug="shop-b"))
    waiting = services.round_create(fl_model=history, min_updates=1)

    response = viewer_client.get("/")
    assert response.status_code == 200
    html = response.content.decode()
    active = html[
        html.index('id="active-rounds"') : html.index("</table>", html.index('id="active-rounds"'))
    ]
    assert f'data-round-id="{running.pk}"' in active
    assert '<progress max="2" value="1">' in active
    assert 'id="upcoming-rounds"' in html and f'data-round-id="{waiting.pk}"' in html
    assert re.search(r'id="stat-merchants-online">1<', html)
    start = html.index('id="merchants-online"')
    online = html[start : html.index("</ul>", start)]
    assert 'data-merchant="shop-a"' in online and 'data-merchant="shop-b"' not in online
    versions = html[html.index('id="latest-versions"') :]
    assert 'data-model="propensity" data-version="2"' in versions
    assert "0.4500" in versions and "0.8500" in versions  # held-out loss and AUC of v2
    for kind in ("quality", "participation", "norms", "privacy"):
        assert f'id="chart-propensity-{kind}"' in html
    assert f'data-series-url="/dashboard/series/{history.pk}.json"' in html
    assert 'id="dashboard-series"' in html and '"eval_loss": [0.45' in html
    assert 'data-ws-path="/ws/rounds/"' in html


@pytest.mark.django_db
def test_charts_come_from_the_vendored_uplot_and_nothing_from_a_cdn(viewer_client):
    make_fl_model(slug="empty")
    html = viewer_client.get("/").content.decode()
    assert '<script src="/static/vendor/uplot/uPlot.iife.min.js">' in html
    assert 'href="/static/vendor/uplot/uPlot.min.css"' in html
    assert not re.search(r'(src|href)="(https?:)?//', html)
    vendored = Path(settings.BASE_DIR) / "static" / "vendor" / "uplot"
    assert "(v1.6.32)" in (vendored / "uPlot.iife.min.js").read_text()[:200]
    assert (vendored / "LICENSE").read_text().startswith("The MIT License")
    assert "No finished rounds." in html  # the table shown without JavaScript


@pytest.mark.django_db
def test_a_merchant_calling_the_api_counts_as_online(merchant_client, merchant):
    assert merchants_online()["online"] == 0
    assert merchant_client.get("/api/v1/rounds").status_code == 200
    seen = merchants_online()
    assert seen["online"] == 1 and [m.slug for m in seen["recent"]] == [merchant.slug]


@pytest.mark.django_db
def test_the_home_page_is_the_dashboard_and_the_nav_links_to_it(viewer_client):
    response = viewer_client.get("/")
    assert response.status_code == 200 and "dashboard.html" in [t.name for t in response.templates]
    assert 'href="/">Dashboard</a>' in response.content.decode().replace(' aria-current="page"', "")


# --- who may see it ---------------------------------------------------------------------------


@pytest.mark.django_db
@pytest.mark.parametrize("path", ["/", "/dashboard/series/{id}.json"])
def test_anonymous_users_and_merchant_tokens_are_sent_to_the_login_page(path, merchant):
    url = path.format(id=make_fl_model().pk)
    for client in (Client(), Client(HTTP_AUTHORIZATION=f"Bearer {token_for(merchant)}")):
        response = client.get(url)
        assert response.status_code == 302 and response["Location"].startswith("/accounts/login/")


@pytest.mark.django_db
def test_operators_read_it_and_staff_without_a_portal_role_cannot(operator_client):
    fl_model = make_fl_model()
    assert operator_client.get("/").status_code == 200
    assert operator_client.get(f"/dashboard/series/{fl_model.pk}.json").status_code == 200
    nobody = Client()
    nobody.force_login(OperatorFactory(role="none"))
    assert nobody.get("/").status_code == 403
    assert nobody.get(f"/dashboard/series/{fl_model.pk}.json").status_code == 403
    assert Round.objects.count() == 0
