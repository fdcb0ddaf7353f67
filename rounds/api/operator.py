"""The operator API: models, initial weights and rounds. Staff session auth (with CSRF)."""

from __future__ import annotations

from django.conf import settings
from django.db.models import Max
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import status
from rest_framework.request import Request
from rest_framework.response import Response

from flportal.api import OperatorApiView
from flportal.errors import ValidationFailed
from rounds import aggregation, artifacts, services
from rounds.api.merchant import BINARY, BinaryBody, binary_body
from rounds.api.serializers import (
    EvaluationSummaryOutput,
    FederatedModelCreateInput,
    FederatedModelOutput,
    FederatedModelUpdateInput,
    PrivacyReportOutput,
    RoundCreateInput,
    RoundOutput,
    StrategyOutput,
    TemplateOutput,
    VersionOutput,
)
from rounds.models import FederatedModel, Round
from rounds.services.privacy import privacy_report
from rounds.templates import TEMPLATES


def _latest_numbers(ids: list[int]) -> dict[int, int]:
    rows = FederatedModel.objects.filter(pk__in=ids).annotate(latest=Max("versions__number"))
    return {row.pk: row.latest for row in rows}


class ModelListApi(OperatorApiView):
    @extend_schema(tags=["operator"], responses=FederatedModelOutput(many=True))
    def get(self, request: Request) -> Response:
        models = list(FederatedModel.objects.all())
        context = {"latest": _latest_numbers([m.pk for m in models])}
        return Response(FederatedModelOutput(models, many=True, context=context).data)

    @extend_schema(
        tags=["operator"],
        request=FederatedModelCreateInput,
        responses={201: FederatedModelOutput},
        summary="Define a model by its tensors; random/zero init or upload later",
    )
    def post(self, request: Request) -> Response:
        data = FederatedModelCreateInput(data=request.data)
        data.is_valid(raise_exception=True)
        values = dict(data.validated_data)
        template, dims = values.pop("template", None), values.pop("dims", None)
        if (template is None) == ("tensors" not in values):
            raise ValidationFailed(
                "Give either tensors or a template (with its dims).", code="tensors_or_template"
            )
        if template is None:
            fl_model = services.fl_model_create(**values, actor=request.user)
        else:
            values.pop("init")
            hints = values.pop("training_hints") or None
            chosen = values.pop("strategy")
            strategy = chosen if "strategy" in request.data else None  # else the template's
            fl_model = services.fl_model_create_from_template(
                template=template,
                dims=dims,
                training_hints=hints,
                strategy=strategy,
                actor=request.user,
                **values,
            )
        context = {"latest": _latest_numbers([fl_model.pk])}
        return Response(
            FederatedModelOutput(fl_model, context=context).data, status=status.HTTP_201_CREATED
        )


class ModelDetailApi(OperatorApiView):
    @extend_schema(tags=["operator"], responses=FederatedModelOutput)
    def get(self, request: Request, slug: str) -> Response:
        fl_model = services.fl_model_get(slug=slug)
        context = {"latest": _latest_numbers([fl_model.pk])}
        return Response(FederatedModelOutput(fl_model, context=context).data)

    @extend_schema(
        tags=["operator"],
        request=FederatedModelUpdateInput,
        responses=FederatedModelOutput,
        summary="Change the strategy, its parameters or the training hints (next round on)",
    )
    def patch(self, request: Request, slug: str) -> Response:
        data = FederatedModelUpdateInput(data=request.data)
        data.is_valid(raise_exception=True)
        fl_model = services.fl_model_update(
            fl_model=services.fl_model_get(slug=slug), actor=request.user, **data.validated_data
        )
        context = {"latest": _latest_numbers([fl_model.pk])}
        return Response(FederatedModelOutput(fl_model, context=context).data)


class EvaluationSummaryApi(OperatorApiView):
    @extend_schema(
        tags=["operator"],
        responses=EvaluationSummaryOutput(many=True),
        summary="Federated evaluation per version: weighted global and per merchant",
    )
    def get(self, request: Request, slug: str) -> Response:
        summary = services.evaluation_summary(fl_model=services.fl_model_get(slug=slug))
        return Response(EvaluationSummaryOutput(summary, many=True).data)


class PrivacyReportApi(OperatorApiView):
    @extend_schema(
        tags=["operator"],
        responses=PrivacyReportOutput,
        summary="Privacy budget: settings, epsilon spent and remaining, ledger",
    )
    def get(self, request: Request, slug: str) -> Response:
        report = privacy_report(services.fl_model_get(slug=slug))
        return Response(PrivacyReportOutput(report).data)


class TemplateListApi(OperatorApiView):
    @extend_schema(
        tags=["operator"],
        responses=TemplateOutput(many=True),
        summary="Model templates (tensors + merchant-side training code in the SDK)",
    )
    def get(self, request: Request) -> Response:
        return Response(TemplateOutput(list(TEMPLATES.values()), many=True).data)


class StrategyListApi(OperatorApiView):
    @extend_schema(
        tags=["operator"],
        responses=StrategyOutput(many=True),
        summary="The aggregation strategies and their parameters",
    )
    def get(self, request: Request) -> Response:
        catalogue = [
            {
                "name": name,
                "label": aggregation.LABELS[name],
                "parallel": name in aggregation.PARALLEL,
                "params": [
                    {
                        "name": p,
                        "default": spec.default,
                        "constraint": spec.describe(),
                        "help": spec.help,
                    }
                    for p, spec in {**schema, "clip_norm": aggregation.CLIP_NORM}.items()
                ],
            }
            for name, schema in aggregation.STRATEGIES.items()
        ]
        return Response(StrategyOutput(catalogue, many=True).data)


class VersionListApi(OperatorApiView):
    parser_classes = [BinaryBody]

    @extend_schema(tags=["operator"], responses=VersionOutput(many=True))
    def get(self, request: Request, slug: str) -> Response:
        fl_model = services.fl_model_get(slug=slug)
        versions = fl_model.versions.select_related("fl_model").order_by("number")
        return Response(VersionOutput(versions, many=True).data)

    @extend_schema(
        tags=["operator"],
        request={BINARY: OpenApiTypes.BINARY},
        responses={201: VersionOutput},
        summary="Upload weights (safetensors) as a new version, e.g. the initial one",
    )
    def post(self, request: Request, slug: str) -> Response:
        fl_model = services.fl_model_get(slug=slug)
        body = binary_body(request)
        with artifacts.receive(body, max_bytes=settings.FLPORTAL_MAX_UPDATE_BYTES) as blob:
            try:
                version = services.version_create(fl_model=fl_model, blob=blob, actor=request.user)
            except services.CodecError as exc:
                raise ValidationFailed(exc.detail, code=exc.code) from None
        return Response(VersionOutput(version).data, status=status.HTTP_201_CREATED)


class RoundListApi(OperatorApiView):
    @extend_schema(
        tags=["operator"],
        responses=RoundOutput(many=True),
        parameters=[OpenApiParameter("model", str), OpenApiParameter("status", str)],
    )
    def get(self, request: Request) -> Response:
        rounds = Round.objects.select_related("fl_model", "base_version", "result_version")
        if model := request.query_params.get("model"):
            rounds = rounds.filter(fl_model__slug=model)
        if wanted := request.query_params.get("status"):
            if wanted not in Round.Status.values:
                raise ValidationFailed(f"Unknown status {wanted!r}.", code="invalid_status")
            rounds = rounds.filter(status=wanted)
        snapshots = [services.round_snapshot(r) for r in rounds.order_by("-created_at")[:200]]
        return Response(RoundOutput(snapshots, many=True).data)

    @extend_schema(
        tags=["operator"],
        request=RoundCreateInput,
        responses={201: RoundOutput(many=True)},
        summary="Open a round now, schedule it, or schedule a series",
        description="`selection` chooses the participants when each round opens: every active "
        "merchant (default), a random `fraction` with `over_selection`, and/or a `cohort` of "
        "merchants by category, region and size band. Errors: `invalid_selection`, "
        "`invalid_fraction`, `invalid_over_selection`, `invalid_cohort`, `invalid_interval`.",
    )
    def post(self, request: Request) -> Response:
        data = RoundCreateInput(data=request.data)
        data.is_valid(raise_exception=True)
        values = dict(data.validated_data)
        fl_model = services.fl_model_get(slug=values.pop("model"))
        values.pop("selection")  # the serializer documents it; the service validates it whole,
        raw_selection = request.data.get("selection")  # refusing keys DRF would silently drop
        created = services.rounds_schedule(
            fl_model=fl_model, selection=raw_selection, actor=request.user, **values
        )
        snapshots = [services.round_snapshot(r) for r in created]
        return Response(RoundOutput(snapshots, many=True).data, status=status.HTTP_201_CREATED)


class RoundDetailApi(OperatorApiView):
    @extend_schema(tags=["operator"], responses=RoundOutput)
    def get(self, request: Request, round_id: int) -> Response:
        fl_round = services.round_get(round_id=round_id)
        return Response(RoundOutput(services.round_snapshot(fl_round)).data)


class RoundCloseApi(OperatorApiView):
    @extend_schema(
        tags=["operator"],
        request=None,
        responses=RoundOutput,
        summary="Close early and aggregate (needs the quorum)",
    )
    def post(self, request: Request, round_id: int) -> Response:
        fl_round = services.round_close(
            fl_round=services.round_get(round_id=round_id), actor=request.user
        )
        return Response(RoundOutput(services.round_snapshot(fl_round)).data)


class RoundCancelApi(OperatorApiView):
    @extend_schema(tags=["operator"], request=None, responses=RoundOutput)
    def post(self, request: Request, round_id: int) -> Response:
        fl_round = services.round_cancel(
            fl_round=services.round_get(round_id=round_id), actor=request.user
        )
        return Response(RoundOutput(services.round_snapshot(fl_round)).data)
