"""Defining a model by uploading its initial weights: the tensors are read from the file's
safetensors header, and the file becomes version 1. Either both exist afterwards or neither."""

from __future__ import annotations

from typing import Any

from django.contrib.auth.models import AbstractBaseUser
from django.db import transaction

from clients.sdk import codec
from flportal.errors import ValidationFailed
from rounds import artifacts
from rounds.models import FederatedModel
from rounds.services.fl_models import fl_model_create, version_create


def weights_specs(blob: artifacts.Blob) -> list[dict[str, Any]]:
    """The tensors (name, shape, dtype) a safetensors file declares, or a 400."""
    try:
        with blob.path.open("rb") as fp:
            layout = codec.read_layout(fp, total_bytes=blob.size)
    except codec.CodecError as exc:
        raise ValidationFailed(exc.detail, code=exc.code) from None
    return [spec.as_dict() for spec in layout.specs]


def fl_model_create_from_weights(
    *,
    name: str,
    blob: artifacts.Blob,
    slug: str = "",
    description: str = "",
    strategy: str = "fedavg",
    strategy_params: Any = None,
    training_hints: Any = None,
    privacy: Any = None,
    actor: AbstractBaseUser | None = None,
) -> FederatedModel:
    """A model whose tensors are those of ``blob`` and whose first version is ``blob`` (checked
    like any version: a valid file, readable by the safetensors library, all values finite)."""
    tensors = weights_specs(blob)
    try:
        with transaction.atomic():
            fl_model = fl_model_create(
                name=name,
                slug=slug,
                description=description,
                tensors=tensors,
                strategy=strategy,
                strategy_params=strategy_params,
                training_hints=training_hints,
                privacy=privacy,
                init="none",
                actor=actor,
            )
            version_create(fl_model=fl_model, blob=blob, actor=actor)
    except codec.CodecError as exc:
        raise ValidationFailed(exc.detail, code=exc.code) from None
    return fl_model
