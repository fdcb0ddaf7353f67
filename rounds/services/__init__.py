"""Every business rule about models, rounds and updates. Views, tasks and commands call these."""

from clients.sdk.codec import CodecError
from rounds.services.evaluations import (
    evaluation_submit,
    evaluation_summary,
    evaluations_pending,
    version_for_merchant,
)
from rounds.services.fl_models import (
    fl_model_create,
    fl_model_create_from_template,
    fl_model_get,
    fl_model_update,
    fl_models_overview,
    parse_strategy,
    version_create,
    version_latest,
)
from rounds.services.lifecycle import (
    round_aggregate,
    round_aggregate_finish,
    round_aggregate_slice,
    round_aggregation_failed,
    round_aggregation_plan,
    round_cancel,
    round_close,
    round_create,
    round_get,
    round_open,
    round_snapshot,
    round_training_hints,
    rounds_tick,
)
from rounds.services.model_weights import fl_model_create_from_weights
from rounds.services.scheduling import round_series_cancel, rounds_schedule, series_rounds
from rounds.services.selection import parse_selection, selection_preview
from rounds.services.updates import update_submit, updates_expected_specs

__all__ = [
    "CodecError",
    "evaluation_submit",
    "evaluation_summary",
    "evaluations_pending",
    "fl_model_create",
    "fl_model_create_from_template",
    "fl_model_create_from_weights",
    "fl_model_get",
    "fl_model_update",
    "fl_models_overview",
    "parse_selection",
    "parse_strategy",
    "round_aggregate",
    "round_aggregate_finish",
    "round_aggregate_slice",
    "round_aggregation_failed",
    "round_aggregation_plan",
    "round_cancel",
    "round_close",
    "round_create",
    "round_get",
    "round_open",
    "round_series_cancel",
    "round_snapshot",
    "round_training_hints",
    "rounds_schedule",
    "rounds_tick",
    "selection_preview",
    "series_rounds",
    "update_submit",
    "updates_expected_specs",
    "version_create",
    "version_for_merchant",
    "version_latest",
]
