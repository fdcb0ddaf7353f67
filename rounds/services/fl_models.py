"""Federated models and their immutable versions."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any

import numpy as np
from django.contrib.auth.models import AbstractBaseUser
from django.db import IntegrityError, transaction
from django.db.models import Count, IntegerField, Max, OuterRef, QuerySet, Subquery
from django.db.models.functions import Coalesce
from django.utils.text import slugify

from clients.sdk import codec
from clients.services import RESERVED_SLUGS
from flportal.errors import Conflict, NotFound, ValidationFailed
from rounds import aggregation, artifacts, audit, templates
from rounds.models import FederatedModel, ModelVersion, Round
from rounds.services.privacy import parse_privacy
from rounds.services.secagg import parse_secagg

MAX_MODEL_PARAMS = 2_000_000_000
_TENSOR_NAME = re.compile(r"^[A-Za-z0-9_.:/-]{1,256}$")
HINT_TYPES: dict[str, type] = {
    "epochs": int,
    "learning_rate": float,
    "batch_size": int,
    "proximal_mu": float,
}
HINT_BOUNDS: dict[str, tuple[float, float]] = {
    "epochs": (1, 1000),
    "learning_rate": (0.0, 100.0),
    "batch_size": (1, 1_000_000),
    "proximal_mu": (0.0, 1000.0),
}


def parse_tensor_specs(raw: Any) -> list[codec.TensorSpec]:
    if not isinstance(raw, list) or not raw:
        raise ValidationFailed(
            "tensors must be a non-empty list of {name, shape, dtype}.", code="invalid_tensors"
        )
    specs: list[codec.TensorSpec] = []
    for item in raw:
        if not isinstance(item, Mapping) or set(item) != {"name", "shape", "dtype"}:
            raise ValidationFailed(
                "Each tensor needs exactly name, shape and dtype.", code="invalid_tensors"
            )
        name, shape, dtype = item["name"], item["shape"], item["dtype"]
        if not isinstance(name, str) or not _TENSOR_NAME.match(name):
            raise ValidationFailed(f"Invalid tensor name {name!r}.", code="invalid_tensors")
        if (
            not isinstance(shape, list)
            or len(shape) > 8
            or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 1 for d in shape)
        ):
            raise ValidationFailed(
                f"Tensor {name!r}: shape must be a list of positive ints.", code="invalid_tensors"
            )
        if dtype not in codec.DTYPE_CODES:
            raise ValidationFailed(
                f"Tensor {name!r}: dtype must be one of {sorted(codec.DTYPE_CODES)}.",
                code="unsupported_dtype",
            )
        specs.append(codec.TensorSpec(name, tuple(shape), dtype))
    if len({s.name for s in specs}) != len(specs):
        raise ValidationFailed("Tensor names must be unique.", code="invalid_tensors")
    if sum(s.size for s in specs) > MAX_MODEL_PARAMS:
        raise ValidationFailed("The model is too large.", code="model_too_large")
    return sorted(specs, key=lambda s: s.name)


def parse_training_hints(raw: Any) -> dict[str, Any]:
    if raw is None:
        return {}
    if not isinstance(raw, Mapping):
        raise ValidationFailed("training_hints must be an object.", code="invalid_hints")
    hints: dict[str, Any] = {}
    for key, value in raw.items():
        if key not in HINT_TYPES:
            raise ValidationFailed(
                f"Unknown training hint {key!r} (known: {sorted(HINT_TYPES)}).",
                code="invalid_hints",
            )
        kind = HINT_TYPES[key]
        low, high = HINT_BOUNDS[key]
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValidationFailed(
                f"Training hint {key!r} must be a {kind.__name__}.", code="invalid_hints"
            )
        if not (low <= value <= high):  # also refuses NaN; compared before any conversion
            raise ValidationFailed(
                f"Training hint {key!r} must be within [{low}, {high}].", code="invalid_hints"
            )
        if kind is int and value != int(value):
            raise ValidationFailed(
                f"Training hint {key!r} must be a {kind.__name__}.", code="invalid_hints"
            )
        hints[key] = kind(value)
    return hints


def initial_weights(
    specs: list[codec.TensorSpec], *, init: str, seed: int
) -> dict[str, np.ndarray]:
    """Glorot-style random init for matrices, small noise for vectors; or all zeros."""
    rng = np.random.default_rng(seed)
    weights: dict[str, np.ndarray] = {}
    for spec in specs:
        if init == "zeros":
            weights[spec.name] = np.zeros(spec.shape, dtype=spec.dtype)
            continue
        fan_in = spec.shape[0] if len(spec.shape) > 1 else max(spec.size, 1)
        fan_out = spec.shape[-1] if len(spec.shape) > 1 else 1
        scale = math.sqrt(2.0 / (fan_in + fan_out))
        weights[spec.name] = (rng.standard_normal(spec.shape) * scale).astype(spec.dtype)
    return weights


def fl_model_create_from_template(
    *,
    name: str,
    template: str,
    dims: Any = None,
    slug: str = "",
    description: str = "",
    training_hints: Any = None,
    strategy: str | None = None,
    strategy_params: Any = None,
    seed: int = 0,
    privacy: Any = None,
    secure_aggregation: Any = None,
    actor: AbstractBaseUser | None = None,
) -> FederatedModel:
    """Define a model from a template: its tensors, first weights, hints and strategy."""
    chosen = templates.template_get(template)
    sizes = templates.template_dims(chosen, dims)
    return fl_model_create(
        name=name,
        slug=slug,
        description=description or chosen.description,
        tensors=templates.template_tensors(chosen, sizes),
        training_hints=chosen.hints if training_hints is None else training_hints,
        strategy=strategy or chosen.strategy,
        strategy_params=strategy_params,
        initial=templates.template_init(chosen, sizes, seed=seed),
        privacy=privacy,
        secure_aggregation=secure_aggregation,
        init="given",
        actor=actor,
    )


def fl_model_create(
    *,
    name: str,
    tensors: Any,
    initial: dict[str, np.ndarray] | None = None,
    slug: str = "",
    description: str = "",
    training_hints: Any = None,
    strategy: str = "fedavg",
    strategy_params: Any = None,
    init: str = "random",
    seed: int = 0,
    privacy: Any = None,
    secure_aggregation: Any = None,
    actor: AbstractBaseUser | None = None,
) -> FederatedModel:
    """Define a model and (unless ``init == "none"``) its first version."""
    name = (name or "").strip()
    if not name:
        raise ValidationFailed("A model needs a name.", code="name_required")
    slug = slugify(slug or name)[:64]
    if not slug:
        raise ValidationFailed("Could not derive a slug from the name.", code="invalid_slug")
    if slug in RESERVED_SLUGS:
        raise ValidationFailed(
            f"{slug!r} is reserved by the portal's URLs; choose another slug.", code="slug_reserved"
        )
    specs = parse_tensor_specs(tensors)
    hints = parse_training_hints(training_hints)
    params = parse_strategy(strategy, strategy_params)
    dp_settings = parse_privacy(privacy, strategy=strategy)
    secagg_settings = parse_secagg(
        secure_aggregation, strategy=strategy, strategy_params=params, privacy=dp_settings
    )
    if init not in {"random", "zeros", "none", "given"} or (init == "given") != (
        initial is not None
    ):
        raise ValidationFailed("init must be random, zeros or none.", code="invalid_init")
    try:
        with transaction.atomic():
            fl_model = FederatedModel.objects.create(
                name=name,
                slug=slug,
                description=description,
                tensors=[s.as_dict() for s in specs],
                training_hints=hints,
                strategy=strategy,
                strategy_params=params,
                privacy=dp_settings,
                secure_aggregation=secagg_settings,
                created_by=actor if actor is not None and actor.is_authenticated else None,
            )
            audit.record(kind="model.created", actor=actor, data={"model": slug})
            if init != "none":  # the model exists only with its first version
                first = (
                    initial if initial is not None else initial_weights(specs, init=init, seed=seed)
                )
                with artifacts.written(first) as blob:
                    version_create(fl_model=fl_model, blob=blob, actor=actor)
    except IntegrityError:
        raise Conflict(f"A model with slug {slug!r} already exists.", code="slug_taken") from None
    return fl_model


def parse_strategy(strategy: str, params: Any) -> dict[str, Any]:
    """Validated strategy parameters (defaults filled in), or a 400 with the library's code."""
    if params is not None and not isinstance(params, Mapping):
        raise ValidationFailed("strategy_params must be an object.", code="invalid_strategy_params")
    try:
        return aggregation.parse_params(strategy, params)
    except aggregation.AggregationError as exc:
        raise ValidationFailed(exc.detail, code=exc.code) from None


def fl_model_update(
    *,
    fl_model: FederatedModel,
    strategy: str | None = None,
    strategy_params: Any = None,
    training_hints: Any = None,
    description: str | None = None,
    privacy: Any = None,
    secure_aggregation: Any = None,
    actor: AbstractBaseUser | None = None,
) -> FederatedModel:
    """Change how the model is trained. Applies from the next round that opens; a running
    round keeps the strategy it opened with."""
    changes: dict[str, Any] = {}
    if strategy is not None or strategy_params is not None:
        name = strategy or fl_model.strategy
        given = (
            strategy_params
            if strategy_params is not None
            else (fl_model.strategy_params if name == fl_model.strategy else {})
        )
        changes.update(strategy=name, strategy_params=parse_strategy(name, given))
    if training_hints is not None:
        changes["training_hints"] = parse_training_hints(training_hints)
    if privacy is not None or "strategy" in changes:
        dp_given = fl_model.privacy if privacy is None else privacy
        changes["privacy"] = parse_privacy(
            dp_given, strategy=changes.get("strategy", fl_model.strategy)
        )
    if secure_aggregation is not None or changes.keys() & {"strategy", "privacy"}:
        changes["secure_aggregation"] = parse_secagg(
            fl_model.secure_aggregation if secure_aggregation is None else secure_aggregation,
            strategy=changes.get("strategy", fl_model.strategy),
            strategy_params=changes.get("strategy_params", fl_model.strategy_params),
            privacy=changes.get("privacy", fl_model.privacy),
        )
    if description is not None:
        changes["description"] = description
    if not changes:
        return fl_model
    with transaction.atomic():
        FederatedModel.objects.filter(pk=fl_model.pk).update(**changes)
        audit.record(
            kind="model.updated",
            actor=actor,
            data={"model": fl_model.slug, **{k: v for k, v in changes.items()}},
        )
    fl_model.refresh_from_db()
    return fl_model


def fl_model_specs(fl_model: FederatedModel) -> list[codec.TensorSpec]:
    return [codec.TensorSpec.from_dict(t) for t in fl_model.tensors]


def version_create(
    *,
    fl_model: FederatedModel,
    blob: artifacts.Blob,
    produced_by: Round | None = None,
    metrics: dict[str, float] | None = None,
    actor: AbstractBaseUser | None = None,
) -> ModelVersion:
    """Store a new immutable version. Outside aggregation only while no round is running."""
    artifacts.validate(blob, fl_model_specs(fl_model))
    name = artifacts.store(blob, f"versions/{fl_model.slug}/{blob.sha256[:16]}.safetensors")
    try:
        with transaction.atomic():
            FederatedModel.objects.select_for_update().filter(pk=fl_model.pk).first()
            if (
                produced_by is None
                and Round.objects.filter(
                    fl_model=fl_model, status__in=[Round.Status.OPEN, Round.Status.AGGREGATING]
                ).exists()
            ):
                raise Conflict(
                    "A round of this model is running; wait for it to finish.",
                    code="round_in_progress",
                )
            latest = fl_model.versions.aggregate(n=Max("number"))["n"] or 0
            version = ModelVersion.objects.create(
                fl_model=fl_model,
                number=latest + 1,
                weights=name,
                sha256=blob.sha256,
                size_bytes=blob.size,
                produced_by=produced_by,
                metrics=metrics or {},
            )
            audit.record(
                kind="version.created",
                actor=actor,
                fl_round=produced_by,
                data={"model": fl_model.slug, "version": version.number, "sha256": blob.sha256},
            )
    except Exception:
        artifacts.delete(name)
        raise
    return version


def fl_model_get(*, slug: str) -> FederatedModel:
    fl_model = FederatedModel.objects.filter(slug=slug).first()
    if fl_model is None:
        raise NotFound(f"No model {slug!r}.", code="model_not_found")
    return fl_model


def version_latest(fl_model: FederatedModel) -> ModelVersion | None:
    return fl_model.versions.order_by("-number").first()


def fl_models_overview() -> QuerySet[FederatedModel]:
    """Every model, by name, with its latest version (number, time), how many rounds it has had
    and the status of its last round: one query for the models page."""
    latest = ModelVersion.objects.filter(fl_model=OuterRef("pk")).order_by("-number")
    last_round = Round.objects.filter(fl_model=OuterRef("pk")).order_by("-number")
    rounds_count = (
        Round.objects.filter(fl_model=OuterRef("pk"))
        .order_by()
        .values("fl_model")
        .annotate(n=Count("pk"))
        .values("n")
    )
    return FederatedModel.objects.annotate(
        latest_version=Subquery(latest.values("number")[:1]),
        latest_at=Subquery(latest.values("created_at")[:1]),
        rounds_count=Coalesce(Subquery(rounds_count, output_field=IntegerField()), 0),
        last_round_status=Subquery(last_round.values("status")[:1]),
    ).order_by("name")
