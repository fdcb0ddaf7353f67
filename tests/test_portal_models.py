"""The model pages: list, create (from a template or initial weights), settings, detail with the
version lineage, evaluations and privacy ledger, version upload and download. Operators act,
viewers read (and download), anonymous visitors are sent to the login page."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
import safetensors.numpy
from django.conf import settings
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client

from clients.sdk import codec
from rounds import services
from rounds.models import Event, FederatedModel, ModelVersion
from tests.factories import (
    MerchantFactory,
    ViewerFactory,
    make_fl_model,
    make_open_round,
    small_weights,
    submit_update,
)

pytestmark = pytest.mark.django_db

DP = {"clip_norm": 1.0, "noise_multiplier": 1.0, "delta": 1e-5, "epsilon_budget": 20.0}


@pytest.fixture
def viewer_client() -> Client:
    client = Client(enforce_csrf_checks=True)
    client.force_login(ViewerFactory())
    client.get("/accounts/login/")
    client.defaults["HTTP_X_CSRFTOKEN"] = client.cookies["csrftoken"].value
    return client


def _safetensors(tensors: dict[str, np.ndarray]) -> bytes:
    return codec.encode(tensors)


def _upload(content: bytes, name: str = "init.safetensors") -> SimpleUploadedFile:
    return SimpleUploadedFile(name, content, content_type="application/octet-stream")


def _stored_files() -> list[Path]:
    root = Path(settings.MEDIA_ROOT)
    return sorted(p for p in root.rglob("*") if p.is_file() and "tmp" not in p.parts)


def _consume(response) -> bytes:
    """Read a (streamed) body to the end, which closes the stored file behind it."""
    if response.streaming:
        return b"".join(response.streaming_content)
    return response.content


def _completed_round(fl_model: FederatedModel):
    """Round 1 of ``fl_model`` completed by two merchants, producing v2, which one evaluates."""
    shops = [MerchantFactory(), MerchantFactory()]
    fl_round = make_open_round(fl_model=fl_model, min_updates=2)
    for value, shop in zip((1.0, 3.0), shops, strict=True):
        submit_update(fl_round, shop, small_weights(value), metrics={"loss": value / 10})
    services.round_aggregate(round_id=fl_round.pk)
    version = fl_model.versions.get(number=2)
    services.evaluation_submit(
        version=version, merchant=shops[0], num_examples=50, metrics={"auc": 0.75}
    )
    return fl_round, version


# --- access -----------------------------------------------------------------------------------

PAGES = [
    "/models/",
    "/models/new/",
    "/models/m/",
    "/models/m/settings/",
    "/models/m/versions/1/weights",
]
ACTIONS = [
    "/models/new/template/",
    "/models/new/upload/",
    "/models/m/settings/",
    "/models/m/versions/",
]


@pytest.mark.parametrize("path", PAGES + ACTIONS)
def test_an_anonymous_visitor_is_sent_to_the_login_page(path):
    make_fl_model(slug="m")

    response = Client().get(path)

    assert response.status_code == 302
    assert response["Location"].startswith("/accounts/login/?next=")


@pytest.mark.parametrize("path", ["/models/", "/models/m/", "/models/m/versions/1/weights"])
def test_a_viewer_reads_the_list_the_detail_and_downloads(viewer_client, path):
    make_fl_model(slug="m")

    response = viewer_client.get(path)

    assert response.status_code == 200
    _consume(response)


@pytest.mark.parametrize("path", ["/models/new/", "/models/m/settings/"])
def test_a_viewer_does_not_get_the_forms(viewer_client, path):
    make_fl_model(slug="m")

    assert viewer_client.get(path).status_code == 403


def test_a_viewer_cannot_create_change_or_upload(viewer_client):
    fl_model = make_fl_model(slug="m")
    weights = _safetensors(small_weights(2.0))

    responses = [
        viewer_client.post(
            "/models/new/template/",
            {"tpl-name": "X", "tpl-template": "purchase_propensity", "tpl-dim-n_features": 4},
        ),
        viewer_client.post(
            "/models/new/upload/", {"upload-name": "Y", "upload-weights": _upload(weights)}
        ),
        viewer_client.post("/models/m/settings/", {"strategy": "median"}),
        viewer_client.post("/models/m/versions/", {"weights": _upload(weights)}),
    ]

    assert [r.status_code for r in responses] == [403] * 4
    assert FederatedModel.objects.count() == 1
    fl_model.refresh_from_db()
    assert fl_model.strategy == "fedavg"
    assert fl_model.versions.count() == 1


def test_the_viewer_sees_no_action_buttons(viewer_client):
    make_fl_model(slug="m")

    listing = viewer_client.get("/models/").content.decode()
    detail = viewer_client.get("/models/m/").content.decode()

    assert 'id="new-model"' not in listing
    assert 'id="schedule-round-link"' not in detail
    assert 'id="upload-version"' not in detail
    assert 'id="download-v1"' in detail


def test_a_post_without_the_csrf_token_is_refused(operator):
    client = Client(enforce_csrf_checks=True)
    client.force_login(operator)

    response = client.post(
        "/models/new/template/",
        {"tpl-name": "X", "tpl-template": "purchase_propensity", "tpl-dim-n_features": 4},
    )

    assert response.status_code == 403
    assert FederatedModel.objects.count() == 0


def test_the_forms_carry_a_csrf_token(operator_client):
    make_fl_model(slug="m")

    for path in ("/models/new/", "/models/m/settings/", "/models/m/"):
        assert b'name="csrfmiddlewaretoken"' in operator_client.get(path).content


# --- the list ---------------------------------------------------------------------------------


def test_the_list_shows_strategy_privacy_latest_version_and_rounds(operator_client):
    plain = make_fl_model(slug="plain", strategy="median")
    private = make_fl_model(slug="private", privacy=DP)
    _completed_round(plain)

    response = operator_client.get("/models/")

    assert response.status_code == 200
    page = response.content.decode()
    plain_row = page[page.index('data-model="plain"') :].split("</tr>")[0]
    private_row = page[page.index('data-model="private"') :].split("</tr>")[0]
    assert "Coordinate-wise median" in plain_row
    assert "v2" in plain_row
    assert ">1</td>" in plain_row  # one round
    assert "status-completed" in plain_row
    assert "off" in plain_row
    assert "DP" in private_row
    assert "0.00 of 20" in private_row  # nothing spent yet
    assert "v1" in private_row
    assert 'id="new-model"' in page
    assert private.slug in page


def test_the_list_without_models_says_how_to_start(operator_client):
    page = operator_client.get("/models/").content.decode()

    assert "No models yet." in page


# --- creating from a template ---------------------------------------------------------------


def test_an_operator_creates_a_model_from_a_template(operator_client, operator):
    response = operator_client.post(
        "/models/new/template/",
        {
            "tpl-name": "Basket propensity",
            "tpl-slug": "",
            "tpl-template": "purchase_propensity_mlp",
            "tpl-dim-purchase_propensity_mlp-n_features": "6",
            "tpl-dim-purchase_propensity_mlp-hidden": "",
            "tpl-strategy": "",
        },
    )

    assert response.status_code == 302
    assert response["Location"] == "/models/basket-propensity/"
    fl_model = FederatedModel.objects.get(slug="basket-propensity")
    assert fl_model.strategy == "fedavg"  # the template's default
    assert fl_model.training_hints["learning_rate"] == 0.05
    shapes = {t["name"]: t["shape"] for t in fl_model.tensors}
    assert [6, 32] in shapes.values()  # n_features x the default hidden width
    assert fl_model.versions.get().number == 1
    assert Event.objects.get(kind="model.created").actor == operator
    assert "Created Basket propensity" in operator_client.get(response["Location"]).content.decode()


def test_a_template_model_can_take_another_strategy(operator_client):
    operator_client.post(
        "/models/new/template/",
        {
            "tpl-name": "Recs",
            "tpl-template": "recommender",
            "tpl-dim-recommender-n_items": "50",
            "tpl-dim-recommender-k": "4",
            "tpl-strategy": "fedadam",
        },
    )

    fl_model = FederatedModel.objects.get(slug="recs")
    assert fl_model.strategy == "fedadam"
    assert fl_model.strategy_params["eta"] == 0.1
    assert {"name": "item_factors", "shape": [50, 4], "dtype": "float32"} in fl_model.tensors


def test_a_template_without_its_required_dimension_is_refused_on_the_page(operator_client):
    response = operator_client.post(
        "/models/new/template/",
        {"tpl-name": "Recs", "tpl-template": "recommender", "tpl-dim-recommender-n_items": ""},
    )

    assert response.status_code == 400
    assert "Recommendation (federated matrix factorisation) needs n_items." in (
        response.content.decode()
    )
    assert 'id="error-tpl-dim-recommender-n_items"' in response.content.decode()
    assert FederatedModel.objects.count() == 0


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"tpl-name": "", "tpl-template": "purchase_propensity"}, "This field is required."),
        ({"tpl-name": "X", "tpl-template": "nope"}, "Select a valid choice."),
        ({"tpl-name": "X", "tpl-template": "purchase_propensity"}, "needs n_features"),
        (
            {
                "tpl-name": "X",
                "tpl-template": "purchase_propensity",
                "tpl-dim-purchase_propensity-n_features": "0",
            },
            "greater than or equal to 1",
        ),
        (
            {
                "tpl-name": "X",
                "tpl-template": "purchase_propensity",
                "tpl-dim-purchase_propensity-n_features": "4",
                "tpl-strategy": "sgd",
            },
            "Select a valid choice.",
        ),
    ],
)
def test_an_invalid_template_form_shows_the_error_and_creates_nothing(
    operator_client, data, message
):
    response = operator_client.post("/models/new/template/", data)

    assert response.status_code == 400
    assert message in response.content.decode()
    assert FederatedModel.objects.count() == 0
    assert Event.objects.count() == 0


def test_a_taken_slug_is_shown_on_the_slug_field(operator_client):
    make_fl_model(slug="taken")

    response = operator_client.post(
        "/models/new/template/",
        {
            "tpl-name": "Other",
            "tpl-slug": "taken",
            "tpl-template": "purchase_propensity",
            "tpl-dim-purchase_propensity-n_features": "4",
        },
    )

    assert response.status_code == 400
    page = response.content.decode()
    assert 'id="error-tpl-slug"' in page
    assert "already exists" in page
    assert FederatedModel.objects.count() == 1


# --- creating from uploaded weights ---------------------------------------------------------


def test_an_operator_creates_a_model_from_uploaded_weights(operator_client):
    weights = {
        "dense.kernel": np.arange(6, dtype=np.float32).reshape(2, 3),
        "dense.bias": np.zeros(3, np.float64),
    }
    content = _safetensors(weights)

    response = operator_client.post(
        "/models/new/upload/",
        {
            "upload-name": "Uploaded",
            "upload-strategy": "trimmed_mean",
            "upload-weights": _upload(content),
        },
    )

    assert response.status_code == 302, response.content
    fl_model = FederatedModel.objects.get(slug="uploaded")
    assert fl_model.tensors == [
        {"name": "dense.bias", "shape": [3], "dtype": "float64"},
        {"name": "dense.kernel", "shape": [2, 3], "dtype": "float32"},
    ]
    assert fl_model.strategy == "trimmed_mean"
    version = fl_model.versions.get()
    assert version.number == 1
    assert version.sha256 == hashlib.sha256(content).hexdigest()


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"not a safetensors file at all", "header"),
        (b"", "The submitted file is empty."),
        (codec.encode({"w": np.array([1.0, np.nan], np.float32)}), "finite"),
        (safetensors.numpy.save({"w": np.array([1, 2], np.int32)}), "dtype"),
    ],
)
def test_refused_weights_show_the_reason_and_leave_nothing_behind(
    operator_client, content, message
):
    response = operator_client.post(
        "/models/new/upload/",
        {"upload-name": "Bad", "upload-strategy": "fedavg", "upload-weights": _upload(content)},
    )

    assert response.status_code == 400
    page = response.content.decode()
    assert message.lower() in page.lower()
    assert 'id="error-upload-weights"' in page
    assert FederatedModel.objects.count() == 0
    assert ModelVersion.objects.count() == 0
    assert Event.objects.count() == 0
    assert _stored_files() == []


def test_weights_over_the_size_limit_are_refused(operator_client, settings):
    settings.FLPORTAL_MAX_UPDATE_BYTES = 64
    content = _safetensors({"w": np.zeros(100, np.float32)})

    response = operator_client.post(
        "/models/new/upload/",
        {"upload-name": "Big", "upload-strategy": "fedavg", "upload-weights": _upload(content)},
    )

    assert response.status_code == 400
    assert "larger than the limit of 64 bytes" in response.content.decode()
    assert FederatedModel.objects.count() == 0


def test_an_upload_with_a_taken_slug_stores_no_file(operator_client):
    make_fl_model(slug="taken")
    before = _stored_files()

    response = operator_client.post(
        "/models/new/upload/",
        {
            "upload-name": "Taken",
            "upload-strategy": "fedavg",
            "upload-weights": _upload(_safetensors({"w": np.ones(3, np.float32)})),
        },
    )

    assert response.status_code == 400
    assert "already exists" in response.content.decode()
    assert FederatedModel.objects.count() == 1
    assert _stored_files() == before


def test_the_create_page_offers_every_template_and_both_forms(operator_client):
    page = operator_client.get("/models/new/").content.decode()

    for name in (
        "purchase_propensity",
        "purchase_propensity_mlp",
        "purchase_intent",
        "recommender",
    ):
        assert f'id="template-{name}"' in page
    assert 'id="model-from-template"' in page
    assert 'id="model-from-upload"' in page
    assert 'enctype="multipart/form-data"' in page


# --- settings ---------------------------------------------------------------------------------


def test_the_settings_form_shows_the_current_settings(operator_client):
    make_fl_model(
        slug="m",
        strategy="fedprox",
        strategy_params={"mu": 0.25},
        training_hints={"epochs": 3},
        privacy=DP,
    )

    page = operator_client.get("/models/m/settings/").content.decode()

    assert '<option value="fedprox" selected>' in page
    assert 'name="param-fedprox-mu" value="0.25"' in page
    assert 'name="epochs" value="3"' in page
    assert 'name="dp_enabled" id="id_dp_enabled" checked' in page
    assert 'id="privacy-budget"' in page


def test_an_operator_changes_strategy_hints_and_privacy(operator_client, operator):
    make_fl_model(slug="m")

    response = operator_client.post(
        "/models/m/settings/",
        {
            "description": "weekly",
            "strategy": "fedprox",
            "param-fedprox-mu": "0.05",
            "param-trimmed_mean-beta": "0.3",  # another strategy's field: ignored
            "clip_norm": "5",
            "epochs": "2",
            "learning_rate": "0.01",
            "batch_size": "",
            "dp_enabled": "on",
            "dp_clip_norm": "1",
            "dp_noise_multiplier": "1.1",
            "dp_delta": "0.00001",
            "dp_epsilon_budget": "8",
            "dp_accountant": "pld",
        },
    )

    assert response.status_code == 302, response.content
    fl_model = FederatedModel.objects.get(slug="m")
    assert fl_model.description == "weekly"
    assert fl_model.strategy == "fedprox"
    assert fl_model.strategy_params == {"mu": 0.05, "clip_norm": 5.0}
    assert fl_model.training_hints == {"epochs": 2, "learning_rate": 0.01}
    assert (
        fl_model.privacy.items()
        >= {
            "accountant": "pld",
            "clip_norm": 1.0,
            "noise_multiplier": 1.1,
            "delta": 1e-5,
            "epsilon_budget": 8.0,
        }.items()
    )
    event = Event.objects.get(kind="model.updated")
    assert event.actor == operator


def test_turning_privacy_off_clears_it(operator_client):
    make_fl_model(slug="m", privacy=DP)

    operator_client.post("/models/m/settings/", {"strategy": "fedavg", "dp_accountant": "rdp"})

    assert FederatedModel.objects.get(slug="m").privacy == {}


@pytest.mark.parametrize(
    ("data", "message", "field"),
    [
        (
            {"strategy": "median", "dp_enabled": "on", **{f"dp_{k}": v for k, v in DP.items()}},
            "Differential privacy runs with FedAvg or FedProx.",
            "dp_enabled",
        ),
        ({"strategy": "fedavg", "dp_enabled": "on"}, "Required with differential privacy.", None),
        (
            {"strategy": "trimmed_mean", "param-trimmed_mean-beta": "0.7"},
            "beta",
            "strategy",
        ),
        ({"strategy": "fedavg", "epochs": "0"}, "greater than or equal to 1", "epochs"),
        ({"strategy": "fedavg", "learning_rate": "nan"}, "Enter a number.", "learning_rate"),
        ({"strategy": "sgd"}, "Select a valid choice.", "strategy"),
        (
            {"strategy": "fedavg", "dp_enabled": "on", **{f"dp_{k}": v for k, v in DP.items()}}
            | {"dp_delta": "0.5"},
            "privacy.delta",
            "dp_enabled",
        ),
    ],
)
def test_invalid_settings_show_the_error_and_change_nothing(operator_client, data, message, field):
    make_fl_model(slug="m", strategy="fedavg", training_hints={"epochs": 1})
    before = FederatedModel.objects.values().get(slug="m")

    response = operator_client.post("/models/m/settings/", {"dp_accountant": "rdp", **data})

    assert response.status_code == 400
    page = response.content.decode()
    assert message in page
    if field:
        assert f'id="error-{field}"' in page
    assert FederatedModel.objects.values().get(slug="m") == before
    assert not Event.objects.filter(kind="model.updated").exists()


def test_an_operator_turns_secure_aggregation_on_and_off(operator_client):
    make_fl_model(slug="m")

    operator_client.post(
        "/models/m/settings/",
        {"strategy": "fedavg", "dp_accountant": "rdp", "secagg_enabled": "on"},
    )
    turned_on = FederatedModel.objects.get(slug="m").secure_aggregation
    page = operator_client.get("/models/m/").content.decode()
    operator_client.post("/models/m/settings/", {"strategy": "fedavg", "dp_accountant": "rdp"})

    assert turned_on["phase_seconds"] >= 5  # the service's defaults
    assert 'id="model-secagg">on' in page
    assert FederatedModel.objects.get(slug="m").secure_aggregation == {}


def test_secure_aggregation_with_a_robust_strategy_is_refused_on_the_page(operator_client):
    make_fl_model(slug="m")

    response = operator_client.post(
        "/models/m/settings/",
        {"strategy": "median", "dp_accountant": "rdp", "secagg_enabled": "on"},
    )

    assert response.status_code == 400
    page = response.content.decode()
    assert 'id="error-secagg_enabled"' in page
    assert "only the sum" in page
    fl_model = FederatedModel.objects.get(slug="m")
    assert (fl_model.strategy, fl_model.secure_aggregation) == ("fedavg", {})


def test_settings_of_an_unknown_model_are_not_found(operator_client):
    assert operator_client.get("/models/nope/settings/").status_code == 404
    assert operator_client.post("/models/nope/settings/", {}).status_code == 404


# --- the detail page --------------------------------------------------------------------------


def test_the_detail_page_shows_the_lineage_with_metrics_and_evaluations(operator_client):
    fl_model = make_fl_model(slug="m", strategy="fedavg")
    fl_round, _ = _completed_round(fl_model)

    response = operator_client.get("/models/m/")

    assert response.status_code == 200
    page = response.content.decode()
    row = page[page.index('id="version-2"') : page.index('id="version-1"')]
    assert f'href="/rounds/{fl_round.pk}/">round #1</a>' in row
    assert 'href="#version-1">v1</a>' in row
    assert "FedAvg" in row
    assert "loss <strong>0.2</strong>" in row  # example-weighted training loss
    assert "auc <strong>0.75</strong>" in row  # federated evaluation
    assert "1 merchant, 50 examples" in row
    assert 'href="/models/m/versions/2/weights"' in row
    initial = page[page.index('id="version-1"') :].split("</tr>")[0]
    assert "initial" in initial
    assert 'id="schedule-round-link"' in page
    assert "/rounds/new/?model=m" in page


def test_the_detail_page_shows_the_privacy_budget_and_ledger(operator_client, aggregate_calls):
    fl_model = make_fl_model(slug="m", privacy=DP)
    MerchantFactory()
    make_open_round(fl_model=fl_model, min_updates=1)
    report = services.fl_model_get(slug="m")
    spent = services.round_snapshot(report.rounds.get())["privacy"]["epsilon_after"]

    page = operator_client.get("/models/m/").content.decode()

    assert f'id="epsilon-spent">{spent:.3f}<' in page
    assert f'id="epsilon-remaining">{20 - spent:.3f}<' in page
    ledger = page[page.index('id="privacy-ledger"') :].split("</table>")[0]
    assert "#1" in ledger
    assert f"{spent:.3f}" in ledger


def test_the_detail_page_of_a_model_without_privacy_says_it_is_off(operator_client):
    make_fl_model(slug="m")

    page = operator_client.get("/models/m/").content.decode()

    assert 'id="privacy-off"' in page
    assert 'id="privacy-ledger"' not in page


def test_the_detail_page_of_an_unknown_model_is_not_found(operator_client):
    assert operator_client.get("/models/nope/").status_code == 404


# --- versions: upload and download ----------------------------------------------------------


def test_an_operator_uploads_a_new_version(operator_client):
    make_fl_model(slug="m")
    content = _safetensors(small_weights(5.0))

    response = operator_client.post("/models/m/versions/", {"weights": _upload(content)})

    assert response.status_code == 302
    version = ModelVersion.objects.get(fl_model__slug="m", number=2)
    assert version.sha256 == hashlib.sha256(content).hexdigest()
    assert "Uploaded version 2." in operator_client.get("/models/m/").content.decode()


def test_a_version_that_does_not_fit_the_model_is_refused_with_the_reason(operator_client):
    make_fl_model(slug="m")

    response = operator_client.post(
        "/models/m/versions/",
        {"weights": _upload(_safetensors({"bias": np.zeros(2, np.float32)}))},
        follow=True,
    )

    page = response.content.decode()
    assert "Upload refused:" in page
    assert ModelVersion.objects.filter(fl_model__slug="m").count() == 1


def test_a_version_is_not_uploaded_while_a_round_runs(operator_client):
    MerchantFactory()
    fl_model = make_fl_model(slug="m")
    make_open_round(fl_model=fl_model, min_updates=1)

    response = operator_client.post(
        "/models/m/versions/", {"weights": _upload(_safetensors(small_weights()))}, follow=True
    )

    assert "A round of this model is running" in response.content.decode()
    assert fl_model.versions.count() == 1


def test_a_download_is_the_stored_file_with_its_sha256_as_etag(viewer_client):
    fl_model = make_fl_model(slug="m")
    version = fl_model.versions.get()

    response = viewer_client.get("/models/m/versions/1/weights")

    body = b"".join(response.streaming_content)
    assert response.status_code == 200
    assert hashlib.sha256(body).hexdigest() == version.sha256
    assert response["ETag"] == f'"{version.sha256}"'
    assert response["Content-Type"] == "application/octet-stream"
    assert response["Content-Disposition"] == 'attachment; filename="m-v1.safetensors"'
    assert codec.decode(body).keys() == {"bias", "weight"}


def test_an_unchanged_version_is_not_sent_twice(viewer_client):
    version = make_fl_model(slug="m").versions.get()

    response = viewer_client.get(
        "/models/m/versions/1/weights", HTTP_IF_NONE_MATCH=f'"{version.sha256}"'
    )

    assert response.status_code == 304
    assert response.content == b""
    assert response["ETag"] == f'"{version.sha256}"'


def test_any_version_can_be_downloaded_and_an_unknown_one_is_not_found(operator_client):
    fl_model = make_fl_model(slug="m")
    _completed_round(fl_model)

    response = operator_client.get("/models/m/versions/2/weights")
    assert response.status_code == 200
    _consume(response)
    assert operator_client.get("/models/m/versions/3/weights").status_code == 404
    assert operator_client.get("/models/x/versions/1/weights").status_code == 404


def test_the_nav_links_to_the_models(operator_client):
    page = operator_client.get("/models/").content.decode()

    assert 'id="nav-models" aria-current="page"' in page
