"""No portal page answers odd query strings or unknown ids with a server error."""

from __future__ import annotations

import pytest

from tests.factories import MerchantFactory, make_fl_model, make_open_round

pytestmark = pytest.mark.django_db

ODD = [
    "page=abc",
    "page=-1",
    "page=99999999999999999999",
    "sort=bogus",
    "sort=-",
    "status=nope",
    "model=zzz",
    "q=%00%ff",
    "after=notanumber",
    "before=2026-13-45",
    "since=yesterday",
    "kind=' OR 1=1",
    "merchant=" + "x" * 500,
    "round=-5",
]


def test_odd_query_strings_never_produce_a_server_error(operator_client):
    merchant = MerchantFactory()
    fl_model = make_fl_model(slug="robust")
    fl_round = make_open_round(fl_model=fl_model, min_updates=1)
    pages = [
        "/",
        "/merchants/",
        f"/merchants/{merchant.slug}/",
        "/models/",
        f"/models/{fl_model.slug}/",
        f"/models/{fl_model.slug}/settings/",
        "/rounds/",
        "/rounds/new/",
        f"/rounds/{fl_round.pk}/",
        "/audit/",
        f"/dashboard/series/{fl_model.pk}.json",
    ]
    for page in pages:
        for query in ODD:
            response = operator_client.get(f"{page}?{query}")
            assert response.status_code < 500, (page, query, response.status_code)


@pytest.mark.parametrize(
    "path",
    [
        "/merchants/no-such-shop/",
        "/models/no-such-model/",
        "/rounds/999999/",
        "/rounds/series/00000000-0000-0000-0000-000000000000/",
        "/dashboard/series/999999.json",
        "/models/no-such-model/versions/1/weights",
    ],
)
def test_unknown_objects_are_404s(operator_client, path):
    assert operator_client.get(path).status_code == 404


JUNK = [
    {},
    {"action": "explode", "name": "\x00", "label": "x" * 5000},
    {"template": "nope", "strategy": "median", "min_updates": "-3", "opens_at": "tomorrow"},
    {"min_updates": "99999999999999999999", "duration_seconds": "1e9", "fraction": "NaN"},
    {"interval_value": "abc", "count": "0", "cohort_category": ["a"] * 50},
    {"privacy": "{", "strategy_params": "[1,2", "secure_aggregation": "yes"},
]


def test_junk_posts_to_every_action_never_produce_a_server_error(operator_client):
    merchant = MerchantFactory()
    fl_model = make_fl_model(slug="robust-post")
    fl_round = make_open_round(fl_model=fl_model, min_updates=1)
    actions = [
        "/merchants/new/",
        f"/merchants/{merchant.slug}/status/",
        f"/merchants/{merchant.slug}/tokens/",
        f"/merchants/{merchant.slug}/tokens/999999/revoke/",
        "/models/new/",
        "/models/new/template/",
        "/models/new/upload/",
        f"/models/{fl_model.slug}/settings/",
        f"/models/{fl_model.slug}/versions/",
        "/rounds/new/",
        f"/rounds/{fl_round.pk}/cancel/",
        "/rounds/series/00000000-0000-0000-0000-000000000000/cancel/",
    ]
    for action in actions:
        for data in JUNK:
            response = operator_client.post(action, data)
            assert response.status_code < 500, (action, data, response.status_code)
