"""Factories for test data. Domain objects that carry files are made through the services."""

from __future__ import annotations

from typing import Any

import factory
import numpy as np
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group

from clients import services as client_services
from clients.models import Merchant
from flportal.roles import OPERATORS_GROUP, VIEWERS_GROUP
from rounds import artifacts, services
from rounds.models import FederatedModel, Round, Update

SMALL_TENSORS = [
    {"name": "bias", "shape": [1], "dtype": "float32"},
    {"name": "weight", "shape": [4], "dtype": "float32"},
]


class MerchantFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Merchant

    name = factory.Sequence(lambda n: f"Shop {n}")
    slug = factory.Sequence(lambda n: f"shop-{n}")
    status = Merchant.Status.ACTIVE
    category = "grocery"
    region = "eu-west"


class OperatorFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = get_user_model()
        skip_postgeneration_save = True

    username = factory.Sequence(lambda n: f"operator{n}")
    is_staff = True

    @factory.post_generation
    def role(self, create: bool, extracted: str | None, **kwargs) -> None:
        """``OperatorFactory()`` is in the operators group; ``role="viewer"`` makes a viewer."""
        name = VIEWERS_GROUP if extracted == "viewer" else OPERATORS_GROUP
        if create and extracted != "none":
            self.groups.add(Group.objects.get_or_create(name=name)[0])


def ViewerFactory(**kwargs):
    return OperatorFactory(role="viewer", **kwargs)


def token_for(merchant: Merchant) -> str:
    _, plaintext = client_services.token_issue(merchant=merchant, label="test")
    return plaintext


def make_fl_model(
    *,
    slug: str = "",
    tensors: list[dict[str, Any]] | None = None,
    init: str = "zeros",
    **kwargs: Any,
) -> FederatedModel:
    slug = slug or f"model-{FederatedModel.objects.count() + 1}"
    return services.fl_model_create(
        name=slug, slug=slug, tensors=tensors or SMALL_TENSORS, init=init, **kwargs
    )


def make_open_round(
    *,
    fl_model: FederatedModel | None = None,
    min_updates: int = 2,
    target_updates: int | None = None,
    duration_seconds: int = 600,
) -> Round:
    """An open round of a small model; invite the merchants that are active before calling."""
    fl_model = fl_model or make_fl_model()
    return services.round_create(
        fl_model=fl_model,
        min_updates=min_updates,
        target_updates=target_updates,
        duration_seconds=duration_seconds,
    )


def small_weights(
    value: float = 1.0,
    *,
    tensors: list[dict[str, Any]] | None = None,
) -> dict[str, np.ndarray]:
    return {
        t["name"]: np.full(t["shape"], value, dtype=t["dtype"]) for t in (tensors or SMALL_TENSORS)
    }


def submit_update(
    fl_round: Round,
    merchant: Merchant,
    weights: dict[str, np.ndarray] | None = None,
    *,
    num_examples: int = 10,
    metrics: dict[str, float] | None = None,
) -> Update:
    """Submit ``weights`` (default: all ones) through the service, as an upload would."""
    with artifacts.written(weights if weights is not None else small_weights()) as blob:
        update, _ = services.update_submit(
            fl_round=fl_round,
            merchant=merchant,
            blob=blob,
            num_examples=num_examples,
            metrics=metrics or {},
        )
    return update
