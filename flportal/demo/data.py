"""Instacart purchase-propensity data for the demo: a thin re-export of
:mod:`flportal.datasets.instacart`, kept so the demo's older imports go on working.

``Shard`` is :class:`flportal.datasets.base.TabularShard`.
"""

from __future__ import annotations

from importlib.util import find_spec
from pathlib import Path

from flportal.datasets.base import DatasetUnavailable, find_data_file
from flportal.datasets.base import TabularShard as Shard
from flportal.datasets.instacart import (
    DATA_FILE,
    DATA_PACKAGE,
    DATA_PACKAGE_VERSION,
    EXCLUDED_USERS,
    FEATURE_NAMES,
    MIN_USERS_PER_SHOP,
    features,
    load_lines,
    partition,
    partition_users,
)

__all__ = [
    "DATA_PACKAGE",
    "DATA_PACKAGE_VERSION",
    "EXCLUDED_USERS",
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


def data_path() -> Path:
    """Return the path of ``df_sample.csv`` without importing its package."""
    # Looks the package up through this module's ``find_spec`` so that it can be patched here.
    return find_data_file(DATA_PACKAGE, DATA_FILE, finder=find_spec)
