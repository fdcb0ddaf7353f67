"""The JSON parser for every API endpoint: refuses anything that looks like training records.

flportal only ever accepts tensors (as binary safetensors), counts and scalar metrics. A JSON body
that carries record-level data — the naive ``{"model_params": ..., "train_data": ...}`` design —
is refused outright with ``training_data_refused``, whichever endpoint it is sent to.
"""

from __future__ import annotations

from typing import Any

from rest_framework.exceptions import ParseError
from rest_framework.parsers import JSONParser

FORBIDDEN_KEYS = frozenset(
    {
        "train_data",
        "training_data",
        "test_data",
        "data",
        "dataset",
        "records",
        "rows",
        "samples",
        "examples",
        "features",
        "labels",
        "x",
        "y",
        "x_train",
        "y_train",
        "customers",
        "orders",
        "transactions",
        "events",
    }
)


class TrainingDataRefused(ParseError):
    default_detail = "flportal never accepts training data; send only model updates."
    default_code = "training_data_refused"


def find_forbidden_key(value: Any, *, depth: int = 0) -> str | None:
    if depth > 20:
        return None
    if isinstance(value, dict):
        for key, item in value.items():
            if isinstance(key, str) and key.lower() in FORBIDDEN_KEYS:
                return key
            found = find_forbidden_key(item, depth=depth + 1)
            if found:
                return found
    elif isinstance(value, list):
        for item in value[:1000]:
            found = find_forbidden_key(item, depth=depth + 1)
            if found:
                return found
    return None


class RecordRefusingJSONParser(JSONParser):
    def parse(self, stream: Any, media_type: str | None = None, parser_context: Any = None) -> Any:
        data = super().parse(stream, media_type, parser_context)
        key = find_forbidden_key(data)
        if key is not None:
            raise TrainingDataRefused(
                f"Field {key!r} looks like record-level data. flportal never accepts training "
                "data: train locally and upload only the model update (binary safetensors)."
            )
        return data
