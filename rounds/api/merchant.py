"""The merchant API: find rounds, download weights, upload updates. Bearer token auth."""

from __future__ import annotations

import json

from django.conf import settings
from django.http import HttpResponse, HttpResponseBase
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework import status
from rest_framework.parsers import BaseParser
from rest_framework.request import Request
from rest_framework.response import Response

from flportal.api import MerchantApiView
from flportal.errors import NotFound, PayloadTooLarge, UnsupportedMediaType, ValidationFailed
from rounds import artifacts, services
from rounds.api.serializers import (
    EvaluationInput,
    EvaluationOutput,
    MerchantRoundListOutput,
    MerchantRoundOutput,
    PendingEvaluationListOutput,
    PendingEvaluationOutput,
    UpdateOutput,
)
from rounds.artifacts import Readable
from rounds.models import Round, Update
from rounds.services.live import round_download_record
from rounds.services.updates import (
    check_can_submit,
    parse_metrics,
    parse_num_examples,
    round_for_merchant,
)

BINARY = "application/octet-stream"


class BinaryBody(BaseParser):
    """For views that stream their body themselves: parsing (which DRF may trigger, e.g. in the
    CSRF check of a session POST) reads nothing, and any media type reaches the view, which
    answers a non-binary one with ``binary_body_required``."""

    media_type = "*/*"

    def parse(self, stream, media_type=None, parser_context=None):  # type: ignore[no-untyped-def]
        return {}


def binary_body(request: Request) -> Readable:
    """The request body as a stream, after the checks that need no byte of it."""
    content_type = request.content_type.split(";")[0].strip().lower()
    if content_type != BINARY:
        raise UnsupportedMediaType(
            f"Send tensors as a binary safetensors body ({BINARY}); flportal accepts no JSON "
            "tensors and never any training data.",
            code="binary_body_required",
        )
    max_bytes = settings.FLPORTAL_MAX_UPDATE_BYTES
    declared = _content_length(request)
    if declared is not None and declared > max_bytes:
        raise PayloadTooLarge(
            f"The body exceeds the limit of {max_bytes} bytes.", code="update_too_large"
        )
    return request.stream or _Empty()


def _my_updates(merchant_id: int, round_ids: list[int]) -> dict[int, Update]:
    updates = Update.objects.select_related("merchant").filter(
        merchant_id=merchant_id, fl_round_id__in=round_ids
    )
    return {u.fl_round_id: u for u in updates}


class RoundListApi(MerchantApiView):
    @extend_schema(
        tags=["merchant"],
        responses=MerchantRoundListOutput,
        operation_id="merchant_rounds_list",
        summary="Open rounds I am invited to, with local-training hints",
    )
    def get(self, request: Request) -> Response:
        rounds = list(
            Round.objects.filter(status=Round.Status.OPEN, participants=self.merchant)
            .select_related("fl_model", "base_version__fl_model")
            .order_by("opened_at")
        )
        context = {"my_updates": _my_updates(self.merchant.pk, [r.pk for r in rounds])}
        return Response({"results": MerchantRoundOutput(rounds, many=True, context=context).data})


class RoundDetailApi(MerchantApiView):
    @extend_schema(tags=["merchant"], responses=MerchantRoundOutput)
    def get(self, request: Request, round_id: int) -> Response:
        fl_round = round_for_merchant(round_id=round_id, merchant=self.merchant)
        context = {"my_updates": _my_updates(self.merchant.pk, [fl_round.pk])}
        return Response(MerchantRoundOutput(fl_round, context=context).data)


class VersionWeightsApi(MerchantApiView):
    @extend_schema(
        tags=["merchant"],
        summary="Download a version's weights (binary safetensors)",
        parameters=[OpenApiParameter("If-None-Match", str, OpenApiParameter.HEADER)],
        responses={
            (200, BINARY): OpenApiResponse(OpenApiTypes.BINARY, description="safetensors"),
            304: OpenApiResponse(description="unchanged"),
        },
    )
    def get(self, request: Request, slug: str, number: int) -> HttpResponseBase:
        version = services.version_for_merchant(merchant=self.merchant, slug=slug, number=number)
        round_download_record(merchant=self.merchant, version=version)  # for the live page
        etag = f'"{version.sha256}"'
        if _etag_matches(request.headers.get("If-None-Match", ""), etag):
            response: HttpResponseBase = HttpResponse(status=status.HTTP_304_NOT_MODIFIED)
        else:
            response = artifacts.download_response(version.weights.name, request._request)
            response["Content-Type"] = BINARY
            response["Content-Length"] = str(version.size_bytes)
            response["Content-Disposition"] = f'attachment; filename="{slug}-v{number}.safetensors"'
        response["ETag"] = etag
        response["Cache-Control"] = "private, max-age=0, must-revalidate"
        return response


class UpdateApi(MerchantApiView):
    parser_classes = [BinaryBody]

    @extend_schema(tags=["merchant"], responses=UpdateOutput, summary="My update to this round")
    def get(self, request: Request, round_id: int) -> Response:
        fl_round = round_for_merchant(round_id=round_id, merchant=self.merchant)
        update = (
            Update.objects.select_related("merchant")
            .filter(fl_round=fl_round, merchant=self.merchant)
            .first()
        )
        if update is None:
            raise NotFound(
                "No update from this merchant to this round yet.", code="update_not_found"
            )
        return Response(UpdateOutput(update).data)

    @extend_schema(
        tags=["merchant"],
        summary="Upload my update: the trained weights as a binary safetensors body",
        description="Idempotent: re-sending the same bytes returns the stored update (200); a "
        "different update to the same round is refused with `update_already_submitted`.",
        request={BINARY: OpenApiTypes.BINARY},
        parameters=[
            OpenApiParameter(
                "num_examples",
                int,
                required=True,
                description="examples trained on (the FedAvg weight)",
            ),
            OpenApiParameter("metrics", str, description='JSON object, e.g. {"loss": 0.41}'),
        ],
        responses={201: UpdateOutput, 200: UpdateOutput},
    )
    def put(self, request: Request, round_id: int) -> Response:
        fl_round = round_for_merchant(round_id=round_id, merchant=self.merchant)
        num_examples = parse_num_examples(request.query_params.get("num_examples"))
        metrics = _metrics_param(request.query_params.get("metrics"))
        check_can_submit(fl_round=fl_round, merchant=self.merchant)
        body = binary_body(request)
        with artifacts.receive(body, max_bytes=settings.FLPORTAL_MAX_UPDATE_BYTES) as blob:
            update, created = services.update_submit(
                fl_round=fl_round,
                merchant=self.merchant,
                blob=blob,
                num_examples=num_examples,
                metrics=metrics,
            )
        return Response(
            UpdateOutput(update).data,
            status=status.HTTP_201_CREATED if created else status.HTTP_200_OK,
        )


class _Empty:
    def read(self, size: int = -1) -> bytes:
        return b""


def _etag_matches(header: str, etag: str) -> bool:
    """RFC 9110 weak comparison, as If-None-Match requires: W/ is ignored, * matches."""
    tags = {tag.strip().removeprefix("W/") for tag in header.split(",") if tag.strip()}
    return "*" in tags or etag in tags


def _content_length(request: Request) -> int | None:
    try:
        return int(request.headers.get("Content-Length", ""))
    except ValueError:
        return None


def _metrics_param(raw: str | None) -> dict[str, float]:
    if not raw:
        return {}
    try:
        value = json.loads(raw)
    except ValueError:
        raise ValidationFailed("metrics must be a JSON object.", code="invalid_metrics") from None
    return parse_metrics(value)


class PendingEvaluationsApi(MerchantApiView):
    @extend_schema(
        tags=["merchant"],
        responses=PendingEvaluationListOutput,
        operation_id="merchant_evaluations_pending",
        summary="Versions I helped train and have not evaluated yet",
    )
    def get(self, request: Request) -> Response:
        versions = services.evaluations_pending(merchant=self.merchant)
        return Response({"results": PendingEvaluationOutput(versions, many=True).data})


class EvaluationApi(MerchantApiView):
    @extend_schema(
        tags=["merchant"],
        request=EvaluationInput,
        responses={201: EvaluationOutput, 200: EvaluationOutput},
        summary="Report my evaluation of a version on my own held-out data",
    )
    def put(self, request: Request, slug: str, number: int) -> Response:
        data = EvaluationInput(data=request.data)
        data.is_valid(raise_exception=True)
        version = services.version_for_merchant(merchant=self.merchant, slug=slug, number=number)
        evaluation, created = services.evaluation_submit(
            version=version,
            merchant=self.merchant,
            num_examples=data.validated_data["num_examples"],
            metrics=parse_metrics(data.validated_data["metrics"]),
        )
        return Response(
            EvaluationOutput(evaluation).data,
            status=status.HTTP_201_CREATED if created else status.HTTP_200_OK,
        )
