"""Business rules in clients/services.py and rounds/services/: merchants, models, rounds."""

from __future__ import annotations

import hashlib
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest
from django.conf import settings
from django.core.files.storage import default_storage
from django.utils import timezone

from clients import services as client_services
from clients.models import Merchant
from clients.sdk import codec
from flportal.errors import Conflict, PermissionDenied, ValidationFailed
from rounds import artifacts, services
from rounds.models import Event, FederatedModel, ModelVersion, Round, Update
from tests.factories import (
    SMALL_TENSORS,
    MerchantFactory,
    make_fl_model,
    make_open_round,
    small_weights,
    submit_update,
)

pytestmark = pytest.mark.django_db


def _stored_files(folder: str) -> list[Path]:
    root = Path(settings.MEDIA_ROOT) / folder
    return sorted(p for p in root.rglob("*") if p.is_file()) if root.exists() else []


def _submit(fl_round, merchant, weights, *, num_examples=10, metrics=None):
    with artifacts.written(weights) as blob:
        return services.update_submit(
            fl_round=fl_round,
            merchant=merchant,
            blob=blob,
            num_examples=num_examples,
            metrics=metrics or {},
        )


def _weights(bias: float, weight: list[float]) -> dict[str, np.ndarray]:
    return {
        "bias": np.array([bias], dtype=np.float32),
        "weight": np.array(weight, dtype=np.float32),
    }


def _stored_weights(version: ModelVersion) -> dict[str, np.ndarray]:
    with default_storage.open(version.weights.name, "rb") as fp:
        return codec.decode(fp.read())


# --- merchants ------------------------------------------------------------------------------


def test_merchant_create_derives_the_slug_and_records_an_event():
    merchant = client_services.merchant_create(name="  Corner Shop  ", category="grocery")

    assert (merchant.name, merchant.slug, merchant.status) == (
        "Corner Shop",
        "corner-shop",
        "pending",
    )
    assert Event.objects.filter(kind="merchant.created", merchant=merchant).count() == 1


def test_merchant_create_with_a_taken_slug_is_a_conflict_and_persists_nothing():
    MerchantFactory(slug="acme")
    events = Event.objects.count()

    with pytest.raises(Conflict) as excinfo:
        client_services.merchant_create(name="Acme")

    assert excinfo.value.code == "slug_taken"
    assert Merchant.objects.count() == 1
    assert Event.objects.count() == events


@pytest.mark.parametrize(
    ("kwargs", "code"),
    [
        ({"name": "   "}, "name_required"),
        ({"name": "!!!"}, "invalid_slug"),
        ({"name": "Shop", "status": "deleted"}, "invalid_status"),
        ({"name": "Shop", "size_band": "huge"}, "invalid_size_band"),
    ],
)
def test_merchant_create_refuses_invalid_input_and_persists_nothing(kwargs, code):
    with pytest.raises(ValidationFailed) as excinfo:
        client_services.merchant_create(**kwargs)

    assert excinfo.value.code == code
    assert not Merchant.objects.exists()
    assert not Event.objects.exists()


@pytest.mark.parametrize(
    ("path", "final"),
    [
        (["active"], "active"),
        (["suspended"], "suspended"),
        (["active", "suspended", "active"], "active"),
        (["suspended", "active", "suspended"], "suspended"),
    ],
)
def test_merchant_set_status_follows_the_allowed_transitions(path, final):
    merchant = MerchantFactory(status="pending")

    for status in path:
        merchant = client_services.merchant_set_status(merchant=merchant, status=status)

    merchant.refresh_from_db()
    assert merchant.status == final
    assert Event.objects.filter(kind="merchant.status").count() == len(path)


@pytest.mark.parametrize(("start", "target"), [("active", "pending"), ("suspended", "pending")])
def test_a_merchant_cannot_go_back_to_pending(start, target):
    merchant = MerchantFactory(status=start)

    with pytest.raises(Conflict) as excinfo:
        client_services.merchant_set_status(merchant=merchant, status=target)

    assert excinfo.value.code == "invalid_transition"
    merchant.refresh_from_db()
    assert merchant.status == start


def test_setting_the_current_status_again_changes_nothing():
    merchant = MerchantFactory(status="active")

    client_services.merchant_set_status(merchant=merchant, status="active")

    assert not Event.objects.filter(kind="merchant.status").exists()


def test_merchant_set_status_refuses_an_unknown_status():
    with pytest.raises(ValidationFailed) as excinfo:
        client_services.merchant_set_status(merchant=MerchantFactory(), status="deleted")

    assert excinfo.value.code == "invalid_status"


def test_merchant_set_status_refuses_to_act_on_a_stale_merchant():
    merchant = MerchantFactory(status="pending")
    Merchant.objects.filter(pk=merchant.pk).update(status="suspended")  # someone else acted

    with pytest.raises(Conflict) as excinfo:
        client_services.merchant_set_status(merchant=merchant, status="active")

    assert excinfo.value.code == "stale_merchant"
    assert Merchant.objects.get(pk=merchant.pk).status == "suspended"


# --- federated models -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("tensors", "code"),
    [
        ([], "invalid_tensors"),
        ("weight", "invalid_tensors"),
        ([{"name": "w", "shape": [1]}], "invalid_tensors"),
        ([{"name": "w", "shape": [1], "dtype": "float32", "extra": 1}], "invalid_tensors"),
        ([{"name": "bad name", "shape": [1], "dtype": "float32"}], "invalid_tensors"),
        ([{"name": "", "shape": [1], "dtype": "float32"}], "invalid_tensors"),
        ([{"name": "w", "shape": [0], "dtype": "float32"}], "invalid_tensors"),
        ([{"name": "w", "shape": [True], "dtype": "float32"}], "invalid_tensors"),
        ([{"name": "w", "shape": "4", "dtype": "float32"}], "invalid_tensors"),
        ([{"name": "w", "shape": [1] * 9, "dtype": "float32"}], "invalid_tensors"),
        ([{"name": "w", "shape": [1], "dtype": "float32"}] * 2, "invalid_tensors"),
        ([{"name": "w", "shape": [1], "dtype": "int32"}], "unsupported_dtype"),
        ([{"name": "w", "shape": [1], "dtype": "bfloat16"}], "unsupported_dtype"),
        ([{"name": "w", "shape": [50_000, 50_000], "dtype": "float32"}], "model_too_large"),
    ],
)
def test_fl_model_create_refuses_invalid_tensors_and_persists_nothing(tensors, code):
    with pytest.raises(ValidationFailed) as excinfo:
        services.fl_model_create(name="m", tensors=tensors, init="zeros")

    assert excinfo.value.code == code
    assert not FederatedModel.objects.exists()
    assert _stored_files("versions") == []


@pytest.mark.parametrize(
    "hints",
    [
        "fast",
        {"momentum": 0.9},
        {"epochs": 1.5},
        {"epochs": True},
        {"epochs": "3"},
        {"epochs": 0},
        {"epochs": 1001},
        {"learning_rate": -0.1},
        {"learning_rate": float("nan")},
        {"learning_rate": float("inf")},
        {"batch_size": 0},
        {"proximal_mu": 1e6},
    ],
)
def test_fl_model_create_refuses_invalid_hints_and_persists_nothing(hints):
    with pytest.raises(ValidationFailed) as excinfo:
        services.fl_model_create(name="m", tensors=SMALL_TENSORS, training_hints=hints)

    assert excinfo.value.code == "invalid_hints"
    assert not FederatedModel.objects.exists()


def test_fl_model_create_refuses_an_integer_hint_too_large_for_a_float():
    with pytest.raises(ValidationFailed) as excinfo:
        services.fl_model_create(
            name="m", tensors=SMALL_TENSORS, training_hints={"epochs": 10**400}
        )

    assert excinfo.value.code == "invalid_hints"
    assert not FederatedModel.objects.exists()


def test_fl_model_create_persists_nothing_when_storing_the_first_version_fails(monkeypatch):
    def disk_full(blob, name):
        raise OSError("No space left on device")

    monkeypatch.setattr(artifacts, "store", disk_full)

    with pytest.raises(OSError, match="No space"):
        services.fl_model_create(name="m", tensors=SMALL_TENSORS, init="zeros")

    assert not FederatedModel.objects.exists()
    assert not Event.objects.filter(kind="model.created").exists()


def test_fl_model_create_normalises_hint_types():
    fl_model = services.fl_model_create(
        name="m",
        tensors=SMALL_TENSORS,
        init="none",
        training_hints={"epochs": 2.0, "learning_rate": 1, "batch_size": 32},
    )

    fl_model.refresh_from_db()
    assert fl_model.training_hints == {"epochs": 2, "learning_rate": 1.0, "batch_size": 32}
    assert isinstance(fl_model.training_hints["epochs"], int)


@pytest.mark.parametrize(
    ("kwargs", "code"),
    [
        ({"init": "ones"}, "invalid_init"),
        ({"strategy": "fedsgd"}, "unknown_strategy"),
        ({"strategy_params": {"mu": 1}}, "invalid_strategy_params"),
        ({"name": " "}, "name_required"),
    ],
)
def test_fl_model_create_refuses_other_invalid_options(kwargs, code):
    with pytest.raises(ValidationFailed) as excinfo:
        services.fl_model_create(**({"name": "m", "tensors": SMALL_TENSORS} | kwargs))

    assert excinfo.value.code == code
    assert not FederatedModel.objects.exists()


def test_fl_model_create_with_a_taken_slug_is_a_conflict():
    make_fl_model(slug="churn")

    with pytest.raises(Conflict) as excinfo:
        services.fl_model_create(name="Churn", tensors=SMALL_TENSORS)

    assert excinfo.value.code == "slug_taken"
    assert FederatedModel.objects.count() == 1
    assert ModelVersion.objects.count() == 1


@pytest.mark.parametrize("init", ["zeros", "random"])
def test_fl_model_create_stores_version_1_with_the_sha256_of_its_file(init):
    fl_model = services.fl_model_create(name="m", tensors=SMALL_TENSORS, init=init)

    version = fl_model.versions.get()
    content = Path(default_storage.path(version.weights.name)).read_bytes()
    assert version.number == 1
    assert version.sha256 == hashlib.sha256(content).hexdigest()
    assert version.size_bytes == len(content)
    assert version.produced_by is None
    weights = codec.decode(content)
    assert {n: (a.shape, a.dtype.name) for n, a in weights.items()} == {
        "bias": ((1,), "float32"),
        "weight": ((4,), "float32"),
    }
    assert np.all(np.isfinite(weights["weight"]))
    if init == "zeros":
        assert not np.any(weights["weight"])
    else:
        assert np.any(weights["weight"])


def test_random_init_is_reproducible_with_the_same_seed():
    first = services.fl_model_create(name="a", tensors=SMALL_TENSORS, init="random", seed=7)
    second = services.fl_model_create(name="b", tensors=SMALL_TENSORS, init="random", seed=7)
    third = services.fl_model_create(name="c", tensors=SMALL_TENSORS, init="random", seed=8)

    assert first.versions.get().sha256 == second.versions.get().sha256
    assert first.versions.get().sha256 != third.versions.get().sha256


def test_a_model_created_without_init_has_no_version_and_cannot_start_a_round():
    MerchantFactory()
    fl_model = services.fl_model_create(name="m", tensors=SMALL_TENSORS, init="none")

    assert not fl_model.versions.exists()
    with pytest.raises(Conflict) as excinfo:
        services.round_create(fl_model=fl_model, min_updates=1)
    assert excinfo.value.code == "model_has_no_version"
    assert not Round.objects.exists()


# --- rounds ---------------------------------------------------------------------------------


def test_round_create_opens_at_once_with_every_active_merchant_invited():
    active = [MerchantFactory(), MerchantFactory()]
    MerchantFactory(status="pending")
    MerchantFactory(status="suspended")
    fl_model = make_fl_model()

    fl_round = services.round_create(fl_model=fl_model, min_updates=2, duration_seconds=60)

    assert fl_round.status == Round.Status.OPEN
    assert fl_round.number == 1
    assert set(fl_round.participants.all()) == set(active)
    assert fl_round.base_version == fl_model.versions.get(number=1)
    assert fl_round.target_updates == 2
    assert fl_round.deadline_at == fl_round.opened_at + timedelta(seconds=60)
    assert list(
        Event.objects.filter(fl_round=fl_round).order_by("id").values_list("kind", flat=True)
    ) == ["round.scheduled", "round.opened"]


@pytest.mark.parametrize(
    ("kwargs", "code"),
    [
        ({"min_updates": 0}, "invalid_quorum"),
        ({"min_updates": 3, "target_updates": 2}, "invalid_target"),
        ({"min_updates": 1, "duration_seconds": 0}, "invalid_duration"),
        ({"min_updates": 1, "duration_seconds": 31 * 24 * 3600}, "invalid_duration"),
    ],
)
def test_round_create_refuses_invalid_settings_and_persists_nothing(kwargs, code):
    fl_model = make_fl_model()

    with pytest.raises(ValidationFailed) as excinfo:
        services.round_create(fl_model=fl_model, **kwargs)

    assert excinfo.value.code == code
    assert not Round.objects.exists()


def test_round_create_refuses_an_opening_time_in_the_past():
    fl_model = make_fl_model()

    with pytest.raises(ValidationFailed) as excinfo:
        services.round_create(
            fl_model=fl_model, min_updates=1, opens_at=timezone.now() - timedelta(hours=1)
        )

    assert excinfo.value.code == "invalid_opens_at"
    assert not Round.objects.exists()


def test_a_round_opening_later_stays_scheduled():
    MerchantFactory()
    fl_round = services.round_create(
        fl_model=make_fl_model(), min_updates=1, opens_at=timezone.now() + timedelta(hours=1)
    )

    assert fl_round.status == Round.Status.SCHEDULED
    assert not fl_round.participants.exists()


def test_a_second_round_waits_and_opens_when_the_first_is_cancelled(
    django_capture_on_commit_callbacks,
):
    MerchantFactory()
    MerchantFactory()
    fl_model = make_fl_model()
    first = services.round_create(fl_model=fl_model, min_updates=1)
    second = services.round_create(fl_model=fl_model, min_updates=1)
    assert (first.status, second.status) == (Round.Status.OPEN, Round.Status.SCHEDULED)
    assert second.number == 2

    with django_capture_on_commit_callbacks(execute=True):
        services.round_cancel(fl_round=first)

    first.refresh_from_db()
    second.refresh_from_db()
    assert first.status == Round.Status.CANCELLED
    assert second.status == Round.Status.OPEN
    assert second.participants.count() == 2


def test_a_round_with_fewer_active_merchants_than_its_quorum_fails_on_opening():
    MerchantFactory()
    MerchantFactory(status="pending")

    fl_round = make_open_round(min_updates=2)

    assert fl_round.status == Round.Status.FAILED
    assert "Only 1 active merchants" in fl_round.failure_reason
    assert "quorum is 2" in fl_round.failure_reason
    assert fl_round.finished_at is not None


def test_round_open_does_not_open_a_round_while_another_is_running():
    MerchantFactory()
    fl_model = make_fl_model()
    services.round_create(fl_model=fl_model, min_updates=1)
    waiting = services.round_create(fl_model=fl_model, min_updates=1)

    assert services.round_open(fl_round=waiting) is False
    waiting.refresh_from_db()
    assert waiting.status == Round.Status.SCHEDULED


# --- updates --------------------------------------------------------------------------------


def test_update_submit_stores_the_file_and_records_an_event():
    merchant, _ = MerchantFactory(), MerchantFactory()
    fl_round = make_open_round()
    weights = _weights(0.5, [1, 2, 3, 4])

    update, created = _submit(fl_round, merchant, weights, num_examples=12, metrics={"loss": 0.4})

    assert created is True
    assert (update.num_examples, update.metrics, update.status) == (12, {"loss": 0.4}, "accepted")
    content = Path(default_storage.path(update.weights.name)).read_bytes()
    assert update.sha256 == hashlib.sha256(content).hexdigest()
    np.testing.assert_array_equal(codec.decode(content)["weight"], [1, 2, 3, 4])
    assert _stored_files("updates") == [Path(default_storage.path(update.weights.name))]
    event = Event.objects.get(kind="update.accepted")
    assert (event.merchant, event.fl_round, event.actor_label) == (
        merchant,
        fl_round,
        f"merchant:{merchant.slug}",
    )
    fl_round.refresh_from_db()
    assert fl_round.status == Round.Status.OPEN
    assert _stored_files("tmp") == []


def test_update_submit_of_the_same_bytes_again_returns_the_stored_update():
    merchant, _ = MerchantFactory(), MerchantFactory()
    fl_round = make_open_round()
    first, _ = _submit(fl_round, merchant, small_weights(2.0))

    again, created = _submit(fl_round, merchant, small_weights(2.0))

    assert created is False
    assert again.pk == first.pk
    assert Update.objects.count() == 1
    assert len(_stored_files("updates")) == 1
    assert Event.objects.filter(kind="update.accepted").count() == 1


def test_update_submit_of_different_bytes_is_refused_and_stores_nothing():
    merchant, _ = MerchantFactory(), MerchantFactory()
    fl_round = make_open_round()
    first, _ = _submit(fl_round, merchant, small_weights(2.0))

    with pytest.raises(Conflict) as excinfo:
        _submit(fl_round, merchant, small_weights(3.0))

    assert excinfo.value.code == "update_already_submitted"
    assert list(Update.objects.values_list("sha256", flat=True)) == [first.sha256]
    assert len(_stored_files("updates")) == 1


def test_update_submit_of_the_same_bytes_with_another_example_count_is_refused():
    merchant, _ = MerchantFactory(), MerchantFactory()
    fl_round = make_open_round()
    _submit(fl_round, merchant, small_weights(), num_examples=10)

    with pytest.raises(Conflict) as excinfo:
        _submit(fl_round, merchant, small_weights(), num_examples=11)

    assert excinfo.value.code == "update_already_submitted"


@pytest.mark.parametrize(
    ("weights", "code"),
    [
        ({"bias": np.ones(1, np.float32), "weight": np.ones(5, np.float32)}, "shape_mismatch"),
        ({"bias": np.ones(1, np.float32), "weight": np.ones(4, np.float64)}, "dtype_mismatch"),
        ({"bias": np.ones(1, np.float32)}, "tensor_names_mismatch"),
        (_weights(0.0, [1, np.nan, 3, 4]), "non_finite_values"),
        (_weights(np.inf, [1, 2, 3, 4]), "non_finite_values"),
    ],
)
def test_update_submit_refuses_an_invalid_update_and_stores_nothing(weights, code):
    merchant, _ = MerchantFactory(), MerchantFactory()
    fl_round = make_open_round()

    with pytest.raises(ValidationFailed) as excinfo:
        _submit(fl_round, merchant, weights)

    assert excinfo.value.code == code
    assert not Update.objects.exists()
    assert _stored_files("updates") == []
    assert not Event.objects.filter(kind="update.accepted").exists()


def test_update_submit_to_a_round_that_is_not_open_is_refused():
    merchant = MerchantFactory()
    fl_round = make_open_round(min_updates=1)
    services.round_cancel(fl_round=fl_round)

    with pytest.raises(Conflict) as excinfo:
        _submit(fl_round, merchant, small_weights())

    assert excinfo.value.code == "round_not_open"
    assert not Update.objects.exists()
    assert _stored_files("updates") == []


def test_update_submit_rechecks_the_round_under_lock_and_removes_the_stored_file():
    merchant = MerchantFactory()
    fl_round = make_open_round(min_updates=1)
    Round.objects.filter(pk=fl_round.pk).update(status=Round.Status.CANCELLED)  # meanwhile
    assert fl_round.status == Round.Status.OPEN  # the caller's copy is stale

    with pytest.raises(Conflict) as excinfo:
        _submit(fl_round, merchant, small_weights())

    assert excinfo.value.code == "round_not_open"
    assert not Update.objects.exists()
    assert _stored_files("updates") == []


def test_update_submit_by_a_suspended_merchant_is_refused():
    merchant = MerchantFactory()
    fl_round = make_open_round(min_updates=1)
    client_services.merchant_set_status(merchant=merchant, status="suspended")

    with pytest.raises(PermissionDenied) as excinfo:
        _submit(fl_round, merchant, small_weights())

    assert excinfo.value.code == "merchant_inactive"
    assert not Update.objects.exists()


def test_reaching_the_target_starts_aggregation_after_commit(
    aggregate_calls, django_capture_on_commit_callbacks
):
    first, second, _third = MerchantFactory(), MerchantFactory(), MerchantFactory()
    fl_round = make_open_round(min_updates=1, target_updates=2)
    submit_update(fl_round, first)
    fl_round.refresh_from_db()
    assert fl_round.status == Round.Status.OPEN

    with django_capture_on_commit_callbacks(execute=True):
        submit_update(fl_round, second)
        assert aggregate_calls == []  # not before the commit

    fl_round.refresh_from_db()
    assert fl_round.status == Round.Status.AGGREGATING
    assert fl_round.closed_at is not None
    assert aggregate_calls == [fl_round.pk]
    closed = Event.objects.get(kind="round.closed", fl_round=fl_round)
    assert closed.data == {"reason": "target reached", "updates": 2}


# --- aggregation ----------------------------------------------------------------------------


def _aggregating_round(aggregate_calls):
    first, second = MerchantFactory(), MerchantFactory()
    fl_round = make_open_round(min_updates=2)
    updates = [
        (_weights(1.0, [1, 2, 3, 4]), 10, {"loss": 0.5, "auc": 0.7}),
        (_weights(5.0, [5, 2, -1, 0.5]), 30, {"loss": 0.1}),
    ]
    for merchant, (weights, num_examples, metrics) in zip([first, second], updates, strict=True):
        _submit(fl_round, merchant, weights, num_examples=num_examples, metrics=metrics)
    fl_round.refresh_from_db()
    assert fl_round.status == Round.Status.AGGREGATING
    return fl_round, updates


def test_round_aggregate_produces_the_example_weighted_average_as_the_next_version(
    aggregate_calls,
):
    fl_round, updates = _aggregating_round(aggregate_calls)

    number = services.round_aggregate(round_id=fl_round.pk)

    assert number == 2
    version = ModelVersion.objects.get(fl_model=fl_round.fl_model, number=2)
    total = sum(n for _, n, _ in updates)
    stored = _stored_weights(version)
    for name in ("bias", "weight"):
        expected = sum(w[name].astype(np.float64) * n / total for w, n, _ in updates)
        np.testing.assert_allclose(stored[name], expected, rtol=1e-6)
        assert stored[name].dtype == np.float32
    assert version.produced_by == fl_round
    assert version.strategy == "fedavg"
    assert version.metrics == {"loss": pytest.approx(0.2), "num_examples": 40.0}
    fl_round.refresh_from_db()
    assert fl_round.status == Round.Status.COMPLETED
    assert fl_round.finished_at is not None
    assert services.round_snapshot(fl_round)["result_version"] == 2


def test_round_aggregate_is_idempotent(aggregate_calls):
    fl_round, _ = _aggregating_round(aggregate_calls)
    services.round_aggregate(round_id=fl_round.pk)

    assert services.round_aggregate(round_id=fl_round.pk) is None

    assert fl_round.fl_model.versions.count() == 2
    assert len(_stored_files("versions")) == 2
    assert Event.objects.filter(kind="round.completed").count() == 1


def test_round_aggregate_of_an_unknown_or_open_round_does_nothing():
    MerchantFactory()
    fl_round = make_open_round(min_updates=1)

    assert services.round_aggregate(round_id=fl_round.pk) is None
    assert services.round_aggregate(round_id=fl_round.pk + 1000) is None
    assert ModelVersion.objects.count() == 1


def test_round_aggregate_fails_the_round_when_an_update_file_is_gone(aggregate_calls):
    fl_round, _ = _aggregating_round(aggregate_calls)
    default_storage.delete(fl_round.updates.first().weights.name)

    assert services.round_aggregate(round_id=fl_round.pk) is None

    fl_round.refresh_from_db()
    assert fl_round.status == Round.Status.FAILED
    assert fl_round.failure_reason.startswith("Aggregation failed")
    assert ModelVersion.objects.count() == 1


def test_the_next_round_opens_on_the_new_version_when_aggregation_completes(
    aggregate_calls, django_capture_on_commit_callbacks
):
    fl_round, _ = _aggregating_round(aggregate_calls)
    following = services.round_create(fl_model=fl_round.fl_model, min_updates=2)
    assert following.status == Round.Status.SCHEDULED

    with django_capture_on_commit_callbacks(execute=True):
        services.round_aggregate(round_id=fl_round.pk)

    following.refresh_from_db()
    assert following.status == Round.Status.OPEN
    assert following.base_version.number == 2


# --- deadlines, closing, cancelling ---------------------------------------------------------


def test_rounds_tick_before_the_deadline_changes_nothing():
    merchant, _ = MerchantFactory(), MerchantFactory()
    fl_round = make_open_round(min_updates=1, target_updates=2)
    submit_update(fl_round, merchant)

    counts = services.rounds_tick(now=timezone.now())

    assert counts == {"opened": 0, "closed": 0, "failed": 0, "secagg_phases": 0}
    fl_round.refresh_from_db()
    assert fl_round.status == Round.Status.OPEN


def test_rounds_tick_after_the_deadline_with_a_quorum_starts_aggregation(
    aggregate_calls, django_capture_on_commit_callbacks
):
    merchant, _ = MerchantFactory(), MerchantFactory()
    fl_round = make_open_round(min_updates=1, target_updates=2, duration_seconds=60)
    submit_update(fl_round, merchant)

    with django_capture_on_commit_callbacks(execute=True):
        counts = services.rounds_tick(now=timezone.now() + timedelta(seconds=61))

    assert counts == {"opened": 0, "closed": 1, "failed": 0, "secagg_phases": 0}
    fl_round.refresh_from_db()
    assert fl_round.status == Round.Status.AGGREGATING
    assert aggregate_calls == [fl_round.pk]
    assert Event.objects.get(kind="round.closed").data["reason"] == "deadline passed"


def test_rounds_tick_after_the_deadline_below_the_quorum_fails_the_round(aggregate_calls):
    merchant, _, _ = MerchantFactory(), MerchantFactory(), MerchantFactory()
    fl_round = make_open_round(min_updates=2, target_updates=3, duration_seconds=60)
    submit_update(fl_round, merchant)

    counts = services.rounds_tick(now=timezone.now() + timedelta(minutes=5))

    assert counts == {"opened": 0, "closed": 0, "failed": 1, "secagg_phases": 0}
    fl_round.refresh_from_db()
    assert fl_round.status == Round.Status.FAILED
    assert "1 of 2" in fl_round.failure_reason
    assert aggregate_calls == []


def test_rounds_tick_opens_a_scheduled_round_that_is_due():
    MerchantFactory()
    fl_model = make_fl_model()
    scheduled = services.round_create(
        fl_model=fl_model, min_updates=1, opens_at=timezone.now() + timedelta(seconds=1)
    )
    Round.objects.filter(pk=scheduled.pk).update(opens_at=timezone.now() - timedelta(seconds=1))

    counts = services.rounds_tick()

    assert counts["opened"] == 1
    scheduled.refresh_from_db()
    assert scheduled.status == Round.Status.OPEN


def test_round_close_below_the_quorum_is_refused():
    merchant, _ = MerchantFactory(), MerchantFactory()
    fl_round = make_open_round(min_updates=2)
    submit_update(fl_round, merchant)

    with pytest.raises(Conflict) as excinfo:
        services.round_close(fl_round=fl_round)

    assert excinfo.value.code == "below_quorum"
    fl_round.refresh_from_db()
    assert fl_round.status == Round.Status.OPEN


def test_round_close_with_the_quorum_starts_aggregation(aggregate_calls):
    merchant, _ = MerchantFactory(), MerchantFactory()
    fl_round = make_open_round(min_updates=1, target_updates=2)
    submit_update(fl_round, merchant)

    closed = services.round_close(fl_round=fl_round)

    assert closed.status == Round.Status.AGGREGATING


def test_round_close_of_a_round_that_is_not_open_is_refused():
    MerchantFactory()
    fl_round = make_open_round(min_updates=1)
    services.round_cancel(fl_round=fl_round)

    with pytest.raises(Conflict) as excinfo:
        services.round_close(fl_round=fl_round)

    assert excinfo.value.code == "round_not_open"


def test_round_cancel_of_a_completed_round_is_refused(aggregate_calls):
    fl_round, _ = _aggregating_round(aggregate_calls)
    services.round_aggregate(round_id=fl_round.pk)

    with pytest.raises(Conflict) as excinfo:
        services.round_cancel(fl_round=fl_round)

    assert excinfo.value.code == "round_not_cancellable"
    fl_round.refresh_from_db()
    assert fl_round.status == Round.Status.COMPLETED


def test_round_cancel_of_a_scheduled_round_cancels_it():
    MerchantFactory()
    fl_round = services.round_create(
        fl_model=make_fl_model(), min_updates=1, opens_at=timezone.now() + timedelta(hours=1)
    )

    services.round_cancel(fl_round=fl_round)

    fl_round.refresh_from_db()
    assert fl_round.status == Round.Status.CANCELLED


def test_a_round_snapshot_lists_only_the_latest_updates_but_counts_them_all(
    monkeypatch, aggregate_calls
):
    from rounds.services import lifecycle

    monkeypatch.setattr(lifecycle, "SNAPSHOT_UPDATES", 2)
    merchants = [MerchantFactory() for _ in range(3)]
    fl_round = make_open_round(min_updates=3, target_updates=3)
    for merchant in merchants:
        submit_update(fl_round, merchant)
    snapshot = services.round_snapshot(fl_round)
    assert snapshot["submitted"] == 3
    assert [u["merchant"] for u in snapshot["updates"]] == [m.slug for m in merchants[1:]]


@pytest.mark.parametrize("slug", ["new", "series"])
def test_slugs_that_portal_urls_use_are_refused(slug):
    with pytest.raises(ValidationFailed) as raised:
        client_services.merchant_create(name="Shop", slug=slug)
    assert raised.value.code == "slug_reserved"
    with pytest.raises(ValidationFailed) as raised:
        make_fl_model(slug=slug)
    assert raised.value.code == "slug_reserved"
