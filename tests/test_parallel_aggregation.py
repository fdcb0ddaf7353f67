"""Aggregation in parallel slices (the Celery chord's three services, run in-process here)
publishes exactly the version the single-task path publishes, bit for bit."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from clients.sdk import codec
from rounds import artifacts, services
from rounds.aggregation import PARALLEL
from rounds.models import Round
from tests.factories import MerchantFactory, make_fl_model, submit_update

pytestmark = pytest.mark.django_db

TENSORS = [
    {"name": "a.bias", "shape": [7], "dtype": "float32"},
    {"name": "b.weight", "shape": [33, 5], "dtype": "float32"},
    {"name": "c.scale", "shape": [], "dtype": "float32"},
]
PARAMS: dict[str, dict[str, Any]] = {"trimmed_mean": {"beta": 0.2}, "fedadam": {"eta": 0.05}}


def closed_round(strategy: str, params: dict[str, Any], slug: str, merchants: list) -> Round:
    fl_model = make_fl_model(
        slug=slug, tensors=TENSORS, init="random", strategy=strategy, strategy_params=params
    )
    fl_round = services.round_create(fl_model=fl_model, min_updates=len(merchants))
    rng = np.random.default_rng(7)  # same updates for every strategy under test
    for k, merchant in enumerate(merchants):
        weights = {
            t["name"]: rng.normal(k % 3, 1.0, t["shape"]).astype(np.float32) for t in TENSORS
        }
        submit_update(fl_round, merchant, weights, num_examples=10 + 5 * k)
    fl_round.refresh_from_db()
    assert fl_round.status == "aggregating"
    return fl_round


def version_arrays(fl_round: Round) -> dict[str, np.ndarray]:
    fl_round.refresh_from_db()
    assert fl_round.status == "completed", fl_round.failure_reason
    with artifacts.local_path(fl_round.result_version.weights.name) as path:
        return {name: np.array(a) for name, a in codec.open_arrays(path).items()}


@pytest.mark.parametrize("strategy", sorted(PARALLEL))
@pytest.mark.parametrize("clip_norm", [None, 3.0])
def test_slices_publish_the_same_version_as_one_task_bit_for_bit(
    strategy, clip_norm, aggregate_calls
):
    merchants = [MerchantFactory() for _ in range(5)]
    params = dict(PARAMS.get(strategy, {}))
    if clip_norm:
        params["clip_norm"] = clip_norm
    single = closed_round(strategy, params, "single", merchants)
    sliced = closed_round(strategy, params, "sliced", merchants)

    services.round_aggregate(round_id=single.pk)
    plan = services.round_aggregation_plan(round_id=sliced.pk, min_params=1, slices=4)
    assert plan is not None and len(plan["spans"]) == 4
    parts = [
        services.round_aggregate_slice(round_id=sliced.pk, spans=spans, scales=plan["scales"])
        for spans in plan["spans"]
    ]
    services.round_aggregate_finish(round_id=sliced.pk, plan=plan, parts=parts)

    expected, got = version_arrays(single), version_arrays(sliced)
    assert expected.keys() == got.keys()
    for name in expected:
        assert np.array_equal(expected[name], got[name]), name
    assert single.result_version.aggregation == sliced.result_version.aggregation
    assert bool(single.result_version.state) == (
        strategy in {"fedavgm", "fedadagrad", "fedadam", "fedyogi"}
    )


def test_small_models_and_krum_are_aggregated_in_one_task(aggregate_calls):
    merchants = [MerchantFactory() for _ in range(5)]
    fl_round = closed_round("krum", {"f": 1}, "krum", merchants)
    assert services.round_aggregation_plan(round_id=fl_round.pk, min_params=1, slices=4) is None
    other = closed_round("fedavg", {}, "small", merchants)
    assert services.round_aggregation_plan(round_id=other.pk, min_params=10**9, slices=4) is None
    assert services.round_aggregation_plan(round_id=other.pk, min_params=1, slices=1) is None


def test_krum_keeps_the_central_updates_and_says_which(aggregate_calls):
    merchants = [MerchantFactory() for _ in range(5)]
    fl_round = closed_round("multi_krum", {"f": 1, "m": 2}, "mk", merchants)
    services.round_aggregate(round_id=fl_round.pk)
    fl_round.refresh_from_db()
    kept = fl_round.result_version.aggregation["kept"]
    assert len(kept) == 2 and set(kept) <= {m.slug for m in merchants}


def test_parts_are_removed_and_a_missing_part_leaves_the_round_for_a_retry(aggregate_calls):
    merchants = [MerchantFactory() for _ in range(3)]
    fl_round = closed_round("median", {}, "gone", merchants)
    plan = services.round_aggregation_plan(round_id=fl_round.pk, min_params=1, slices=2)
    first = services.round_aggregate_slice(
        round_id=fl_round.pk, spans=plan["spans"][0], scales=None
    )
    assert (
        services.round_aggregate_finish(round_id=fl_round.pk, plan=plan, parts=[first, None])
        is None
    )
    fl_round.refresh_from_db()
    assert fl_round.status == "aggregating"
    assert not artifacts.default_storage.exists(first)


def test_a_failed_slice_fails_the_round_with_a_reason(aggregate_calls):
    merchants = [MerchantFactory() for _ in range(3)]
    fl_round = closed_round("fedavg", {}, "fail", merchants)
    services.round_aggregation_failed(round_id=fl_round.pk, reason="a parallel slice failed")
    fl_round.refresh_from_db()
    assert fl_round.status == "failed"
    assert "parallel slice failed" in fl_round.failure_reason


def test_a_round_that_is_no_longer_aggregating_is_left_alone(aggregate_calls):
    merchants = [MerchantFactory() for _ in range(3)]
    fl_round = closed_round("fedavg", {}, "done", merchants)
    services.round_aggregate(round_id=fl_round.pk)
    assert services.round_aggregation_plan(round_id=fl_round.pk, min_params=1, slices=2) is None
    assert (
        services.round_aggregate_slice(round_id=fl_round.pk, spans={"a.bias": [0, 7]}, scales=None)
        is None
    )
    assert fl_round.fl_model.versions.count() == 2
