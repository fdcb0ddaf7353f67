"""Pure numpy aggregation strategies: no Django, no I/O, no hidden randomness."""

from rounds.aggregation.clipping import (
    clip,
    clip_report,
    clip_scales,
    scale_deltas,
    update_norms,
)
from rounds.aggregation.core import (
    AggregationError,
    assemble,
    check_compatible,
    check_weights,
    partition_spans,
)
from rounds.aggregation.fedavg import fedavg
from rounds.aggregation.robust import krum, krum_select, median, pairwise_gram, trimmed_mean
from rounds.aggregation.server_opt import fedadagrad, fedadam, fedavgm, fedyogi
from rounds.aggregation.strategies import (
    CLIP_NORM,
    LABELS,
    PARALLEL,
    STRATEGIES,
    Outcome,
    aggregate,
    aggregate_span,
    finish,
    min_updates,
    parse_params,
)

__all__ = [
    "CLIP_NORM",
    "LABELS",
    "PARALLEL",
    "STRATEGIES",
    "AggregationError",
    "Outcome",
    "aggregate",
    "aggregate_span",
    "assemble",
    "check_compatible",
    "check_weights",
    "clip",
    "clip_report",
    "clip_scales",
    "fedadagrad",
    "fedadam",
    "fedavg",
    "fedavgm",
    "fedyogi",
    "finish",
    "krum",
    "krum_select",
    "median",
    "min_updates",
    "pairwise_gram",
    "parse_params",
    "partition_spans",
    "scale_deltas",
    "trimmed_mean",
    "update_norms",
]
