"""Pure numpy aggregation strategies: no Django, no I/O, no hidden randomness."""

from rounds.aggregation.core import AggregationError, check_compatible, check_weights
from rounds.aggregation.fedavg import fedavg

__all__ = ["AggregationError", "check_compatible", "check_weights", "fedavg"]
