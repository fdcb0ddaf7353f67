"""The flportal merchant client: wire codec, HTTP client and CLI. Imports nothing from Django."""

from clients.sdk.client import ApiError, FlportalClient, RoundInfo
from clients.sdk.codec import CodecError, TensorSpec
from clients.sdk.training import EvalResult, Evaluator, Trainer, TrainResult

__all__ = [
    "ApiError",
    "CodecError",
    "EvalResult",
    "Evaluator",
    "FlportalClient",
    "RoundInfo",
    "TensorSpec",
    "TrainResult",
    "Trainer",
]
