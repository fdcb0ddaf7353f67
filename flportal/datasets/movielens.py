"""MovieLens-100K explicit ratings, split across simulated shops for federated recommenders.

The ratings ship as ``dataset_example/ml-100k/ml-100k.inter`` inside the ``recbole`` package,
which is only a container for that file (see :mod:`flportal.datasets.base`). Nothing of the
file is reproduced here: its columns, rating scale and sizes are read from the installed copy.

Shops are groups of users: each user belongs to exactly one shop. For every user the latest
``test_fraction`` of their ratings by timestamp (at least one) is held out as test
(``holdout="time"``; ``holdout="random"`` holds out a seeded random ``test_fraction`` of each
user's ratings instead, the protocol of the published random-fold RMSE figures, and an easier
one: later ratings are lower and harder to predict), so a shop's test set holds ratings of its
own users only, and :attr:`Split.test` is the union of the shops' test sets.

Items are indexed globally (``0..n_items-1``, in raw-id order), users locally per shop
(``0..n_users-1``, in raw-id order); :func:`flportal.datasets.pooled` re-indexes users globally
with ``meta["user_offsets"]``, the indexing ``Split.test`` uses.

How users are dealt to shops (``mode``):

* ``"iid"``: a seeded shuffle cut into equal chunks (the reference, near-zero skew);
* ``"size"``: a seeded shuffle cut into chunks of Dirichlet-distributed sizes (quantity skew);
* ``"rating"``: users sorted by their mean training rating, equal contiguous chunks (label skew);
* ``"taste"``: genre-free taste clusters (default). Items are clustered from the co-rating
  structure of the training ratings alone (spectral embedding of the user-item incidence matrix,
  then a seeded spherical k-means); each user's top cluster is the one where their share of
  ratings exceeds the overall share the most. Users sorted by (top cluster, margin) are dealt in
  equal contiguous chunks, so each shop's customers favour a few kinds of films (item skew).
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any, Literal

import numpy as np

from flportal.datasets.base import (
    DatasetUnavailable,
    RatingsShard,
    Shop,
    Split,
    check_choice,
    check_fraction,
    check_int,
    concat_shards,
    dirichlet_sizes,
    find_data_file,
    readonly,
    skew_stats,
)

__all__ = [
    "DATA_FILE",
    "DATA_PACKAGE",
    "HOLDOUTS",
    "MIN_USERS_PER_SHOP",
    "MODES",
    "data_path",
    "holdout_mask",
    "item_clusters",
    "load_ratings",
    "split",
]

DATA_PACKAGE = "recbole"
DATA_FILE = "dataset_example/ml-100k/ml-100k.inter"

MODES = ("iid", "size", "rating", "taste")
Mode = Literal["iid", "size", "rating", "taste"]
HOLDOUTS = ("time", "random")
Holdout = Literal["time", "random"]

#: Every shop receives at least this many users.
MIN_USERS_PER_SHOP = 10

_COLUMNS = ("user_id", "item_id", "rating", "timestamp")
_SIZE_CONCENTRATION = 1.0
_EMBEDDING_DIM = 16
_KMEANS_ITERATIONS = 50


def data_path() -> Path:
    """Return the path of ``ml-100k.inter`` without importing ``recbole``."""
    return find_data_file(DATA_PACKAGE, DATA_FILE)


@functools.lru_cache(maxsize=1)
def load_ratings() -> dict[str, np.ndarray]:
    """Parse the ratings into read-only columns, sorted by user, timestamp and item.

    ``user`` (int64, ``0..n_users-1``) and ``item`` (int64, ``0..n_items-1``) index the sorted
    raw ids ``user_ids`` and ``item_ids``; ``rating`` is float32, ``timestamp`` int64. A
    repeated (user, item) pair would keep only its latest rating.
    """
    path = data_path()
    with path.open(encoding="utf-8") as handle:
        header = [name.split(":", 1)[0] for name in handle.readline().rstrip("\r\n").split("\t")]
        missing = [c for c in _COLUMNS if c not in header]
        if missing:
            raise DatasetUnavailable(f"{path} lacks the columns {missing} (header {header})")
        table = np.loadtxt(
            handle,
            delimiter="\t",
            dtype=np.float64,
            usecols=[header.index(c) for c in _COLUMNS],
            ndmin=2,
        )
    if table.shape[0] == 0:
        raise DatasetUnavailable(f"{path} holds no ratings")
    raw_user, raw_item, rating, timestamp = table.T
    for name, column in (("user_id", raw_user), ("item_id", raw_item), ("timestamp", timestamp)):
        if not np.array_equal(column, np.round(column)):
            raise DatasetUnavailable(f"{path}: {name} holds non-integer values")
    user_ids, user = np.unique(raw_user.astype(np.int64), return_inverse=True)
    item_ids, item = np.unique(raw_item.astype(np.int64), return_inverse=True)
    timestamp = timestamp.astype(np.int64)

    # Keep the latest rating of each (user, item) pair.
    order = np.lexsort((timestamp, item, user))
    pair = user[order] * item_ids.shape[0] + item[order]
    last = np.ones(order.shape[0], dtype=bool)
    last[:-1] = pair[1:] != pair[:-1]
    keep = order[last]
    keep = keep[np.lexsort((item[keep], timestamp[keep], user[keep]))]
    return {
        "user": readonly(user[keep]),
        "item": readonly(item[keep]),
        "rating": readonly(rating[keep].astype(np.float32)),
        "timestamp": readonly(timestamp[keep]),
        "user_ids": readonly(user_ids),
        "item_ids": readonly(item_ids),
    }


@functools.lru_cache(maxsize=8)
def holdout_mask(
    test_fraction: float = 0.2, holdout: Holdout = "time", seed: int = 0
) -> np.ndarray:
    """Read-only bool per rating of :func:`load_ratings`: held out as test.

    Each user's ``test_fraction`` of ratings (rounded half up, at least one, never all of
    them): the latest ones by timestamp (``holdout="time"``, ``seed`` unused) or a random
    choice seeded by ``seed`` (``holdout="random"``).
    """
    test_fraction = check_fraction("test_fraction", test_fraction)
    holdout = check_choice("holdout", holdout, HOLDOUTS)
    seed = check_int("seed", seed, minimum=0)
    user = load_ratings()["user"]
    counts = np.bincount(user)
    starts = np.cumsum(counts) - counts
    position = np.arange(user.shape[0]) - starts[user]
    if holdout == "random":  # a random order inside each user's (contiguous) rows
        shuffled = np.lexsort((np.random.default_rng(seed).random(user.shape[0]), user))
        position = position[np.argsort(shuffled)]
    n_test = np.minimum(np.maximum(1, np.floor(test_fraction * counts + 0.5)), counts - 1)
    return readonly(position >= (counts - n_test)[user])


@functools.lru_cache(maxsize=8)
def item_clusters(
    clusters: int = 8,
    seed: int = 0,
    test_fraction: float = 0.2,
    holdout: Holdout = "time",
    holdout_seed: int = 0,
) -> np.ndarray:
    """Read-only int64 cluster id per item, from the training ratings only.

    Items are embedded by the leading non-trivial singular vectors of the degree-normalised
    user-item incidence matrix (who rated what, not how), then grouped by a seeded, rating-count
    weighted spherical k-means. Items without training ratings get cluster 0.
    """
    clusters = check_int("clusters", clusters, minimum=2)
    seed = check_int("seed", seed, minimum=0)
    data = load_ratings()
    train = ~holdout_mask(test_fraction, holdout, holdout_seed)
    n_users, n_items = data["user_ids"].shape[0], data["item_ids"].shape[0]
    if clusters > n_items:
        raise ValueError(f"clusters must be at most {n_items}, got {clusters}")
    incidence = np.zeros((n_users, n_items))
    incidence[data["user"][train], data["item"][train]] = 1.0
    degree = incidence.sum(axis=1, keepdims=True)
    normalised = incidence / np.sqrt(np.maximum(degree, 1.0))
    # Left singular vectors from the small user-user Gram matrix; eigh sorts ascending.
    _, vectors = np.linalg.eigh(normalised @ normalised.T)
    dims = min(_EMBEDDING_DIM, n_users - 1)
    embedding = normalised.T @ vectors[:, -2 : -2 - dims : -1]  # skip the popularity axis
    norms = np.linalg.norm(embedding, axis=1, keepdims=True)
    embedding = np.divide(embedding, norms, out=np.zeros_like(embedding), where=norms > 0)
    weight = incidence.sum(axis=0)
    return readonly(_spherical_kmeans(embedding, weight, clusters, np.random.default_rng(seed)))


def _spherical_kmeans(
    points: np.ndarray, weight: np.ndarray, k: int, rng: np.random.Generator
) -> np.ndarray:
    """Weighted k-means on unit vectors by cosine similarity, k-means++ seeding."""
    candidates = np.flatnonzero(weight > 0)
    if candidates.shape[0] < k:
        raise ValueError(f"only {candidates.shape[0]} items have training ratings, need {k}")
    chosen = [int(rng.choice(candidates, p=weight[candidates] / weight[candidates].sum()))]
    for _ in range(1, k):
        similarity = (points[candidates] @ points[chosen].T).max(axis=1)
        gap = weight[candidates] * np.maximum(1.0 - similarity, 0.0)
        if gap.sum() <= 0:
            gap = weight[candidates].astype(np.float64).copy()
            gap[np.isin(candidates, chosen)] = 0.0
        chosen.append(int(rng.choice(candidates, p=gap / gap.sum())))
    centres = points[chosen].copy()
    labels = np.full(points.shape[0], -1, dtype=np.int64)
    for _ in range(_KMEANS_ITERATIONS):
        new = np.argmax(points @ centres.T, axis=1).astype(np.int64)
        if np.array_equal(new, labels):
            break
        labels = new
        sums = np.zeros_like(centres)
        np.add.at(sums, labels, points * weight[:, None])
        norms = np.linalg.norm(sums, axis=1, keepdims=True)
        centres = np.where(norms > 0, sums / np.where(norms > 0, norms, 1.0), centres)
    return labels


def _user_order(
    mode: str, n_users: int, shops: int, seed: int, clusters: int, held: tuple[Any, ...]
) -> tuple[np.ndarray, np.ndarray]:
    """Users (global index) in dealing order, and each shop's number of users."""
    rng = np.random.default_rng(seed)
    equal = np.array([len(c) for c in np.array_split(np.arange(n_users), shops)])
    tiebreak = rng.permutation(n_users)
    if mode == "iid":
        return tiebreak, equal
    if mode == "size":
        sizes = dirichlet_sizes(
            n_users, shops, minimum=MIN_USERS_PER_SHOP, rng=rng, concentration=_SIZE_CONCENTRATION
        )
        return tiebreak, sizes
    data = load_ratings()
    train = ~holdout_mask(*held)
    user = data["user"][train]
    if mode == "rating":
        mean = np.bincount(user, weights=data["rating"][train], minlength=n_users) / np.maximum(
            np.bincount(user, minlength=n_users), 1
        )
        return np.lexsort((tiebreak, mean)), equal
    # taste
    cluster = item_clusters(clusters, seed, *held)[data["item"][train]]
    counts = np.zeros((n_users, clusters))
    np.add.at(counts, (user, cluster), 1.0)
    share = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1.0)
    margin = share - counts.sum(axis=0) / counts.sum()
    top = np.argmax(margin, axis=1)
    return np.lexsort((tiebreak, -margin.max(axis=1), top)), equal


def split(
    shops: int = 10,
    seed: int = 0,
    *,
    mode: Mode = "taste",
    test_fraction: float = 0.2,
    holdout: Holdout = "time",
    clusters: int = 8,
) -> Split[RatingsShard]:
    """MovieLens-100K as ``shops`` shops of :class:`RatingsShard` (see the module doc).

    ``clusters`` is the number of item clusters of the ``"taste"`` mode (also used for the
    ``cluster_tv`` skew number of every mode). ``holdout`` picks each user's test ratings:
    ``"time"`` (latest) or ``"random"`` (seeded by ``seed``). Deterministic for given
    arguments.
    """
    shops = check_int("shops", shops, minimum=1)
    seed = check_int("seed", seed, minimum=0)
    mode = check_choice("mode", mode, MODES)
    test_fraction = check_fraction("test_fraction", test_fraction)
    holdout = check_choice("holdout", holdout, HOLDOUTS)
    held = (test_fraction, holdout, seed if holdout == "random" else 0)
    clusters = check_int("clusters", clusters, minimum=2)
    data = load_ratings()
    n_users, n_items = data["user_ids"].shape[0], data["item_ids"].shape[0]
    if shops * MIN_USERS_PER_SHOP > n_users:
        raise ValueError(
            f"not enough users for {shops} shops: {n_users} users, each shop needs at least "
            f"{MIN_USERS_PER_SHOP} (at most {n_users // MIN_USERS_PER_SHOP} shops)"
        )

    order, sizes = _user_order(mode, n_users, shops, seed, clusters, held)
    shop_of = np.empty(n_users, dtype=np.int64)
    local_of = np.empty(n_users, dtype=np.int64)
    members = [np.sort(chunk) for chunk in np.split(order, np.cumsum(sizes)[:-1])]
    for index, users in enumerate(members):
        shop_of[users] = index
        local_of[users] = np.arange(users.shape[0])

    test = holdout_mask(*held)
    row_shop = shop_of[data["user"]]
    result = []
    for index, users in enumerate(members):
        in_shop = row_shop == index

        def shard(rows: np.ndarray, n: int = users.shape[0]) -> RatingsShard:
            return RatingsShard(
                users=local_of[data["user"][rows]],
                items=data["item"][rows],
                ratings=data["rating"][rows],
                n_users=n,
                n_items=n_items,
            )

        result.append(
            Shop(name=f"shop-{index:02d}", train=shard(in_shop & ~test), test=shard(in_shop & test))
        )

    scale, stars = np.unique(data["rating"], return_inverse=True)  # the star values in use
    cluster = item_clusters(clusters, seed, *held)[data["item"]]
    skew = skew_stats(_counts(row_shop, stars, shops, len(scale)), scale.astype(np.float64))
    cluster_counts = _counts(row_shop, cluster, shops, clusters)
    skew["cluster_tv"] = skew_stats(cluster_counts, np.zeros(clusters))["label_tv"]
    skew["user_ratio"] = float(max(sizes) / min(sizes))
    meta: dict[str, Any] = {
        "n_items": n_items,
        "n_users": n_users,
        "n_ratings": int(data["rating"].shape[0]),
        "user_offsets": [int(o) for o in np.cumsum(sizes) - sizes],
        "shop_user_ids": [data["user_ids"][users] for users in members],
        "item_ids": data["item_ids"],
        "rating_range": (float(scale[0]), float(scale[-1])),
        "mode": mode,
        "clusters": clusters,
        "test_fraction": test_fraction,
        "holdout": holdout,
        "test_is_union_of_shop_tests": True,
    }
    return Split(
        shops=result,
        test=concat_shards([shop.test for shop in result]),
        skew=skew,
        meta=meta,
    )


def _counts(row_shop: np.ndarray, label: np.ndarray, shops: int, labels: int) -> np.ndarray:
    return np.bincount(row_shop * labels + label, minlength=shops * labels).reshape(shops, labels)
