"""The merchant side of secure aggregation: one resource per round, one message per phase."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import serializers, status
from rest_framework.request import Request
from rest_framework.response import Response

from flportal.api import MerchantApiView
from flportal.errors import ValidationFailed
from rounds import artifacts
from rounds.api.merchant import BINARY, BinaryBody, _metrics_param, binary_body
from rounds.services import secagg
from rounds.services.updates import round_for_merchant

MAX_ENTRIES = 1001


class NeighbourOutput(serializers.Serializer):
    index = serializers.IntegerField()
    c_public_key = serializers.CharField(help_text="registered X25519 key, base64")
    s_public_key = serializers.CharField(help_text="this round's mask key, base64")
    survived = serializers.BooleanField(help_text="uploaded its masked input")


class SealedShareOutput(serializers.Serializer):
    sender = serializers.IntegerField()
    sealed = serializers.CharField(help_text="ChaCha20-Poly1305 sealed share bundle, base64")


class SecAggStateOutput(serializers.Serializer):
    round = serializers.IntegerField()
    status = serializers.CharField()
    phase = serializers.CharField(help_text="advertise, share, mask, unmask, or empty")
    phase_deadline_at = serializers.DateTimeField(allow_null=True)
    context = serializers.CharField(help_text="binds keys and shares to this round")
    index = serializers.IntegerField(help_text="my Shamir x coordinate")
    members = serializers.IntegerField()
    threshold = serializers.IntegerField()
    clip_range = serializers.FloatField()
    max_weight = serializers.IntegerField()
    l2_clip_norm = serializers.FloatField(
        allow_null=True, help_text="with DP: clip my change to this L2 norm before masking"
    )
    done = serializers.DictField(child=serializers.BooleanField())
    neighbours = NeighbourOutput(many=True)
    shares = SealedShareOutput(many=True)


class KeysInput(serializers.Serializer):
    s_public_key = serializers.CharField(max_length=64, help_text="X25519, base64 of 32 bytes")


class SharesInput(serializers.Serializer):
    shares = serializers.DictField(
        child=serializers.CharField(max_length=4096),
        help_text="holder index -> sealed bundle (share phase) or sender index -> revealed "
        "share (unmask phase), base64",
    )


def _indexed(raw: dict[str, Any], *, field: str) -> dict[int, bytes]:
    if len(raw) > MAX_ENTRIES:
        raise ValidationFailed(f"At most {MAX_ENTRIES} entries.", code="secagg_too_many")
    parsed: dict[int, bytes] = {}
    for key, value in raw.items():
        if not (isinstance(key, str) and key.isascii() and key.isdigit() and len(key) <= 5):
            raise ValidationFailed(f"{field} keys are member indices.", code="secagg_invalid_index")
        parsed[int(key)] = secagg.decode_b64(value, field=f"{field}[{key}]")
    return parsed


class _SecAggView(MerchantApiView):
    def _state(self, round_id: int, created: bool | None = None) -> Response:
        fl_round = round_for_merchant(round_id=round_id, merchant=self.merchant)
        state = secagg.state_for(fl_round=fl_round, merchant=self.merchant)
        code = status.HTTP_200_OK if not created else status.HTTP_201_CREATED
        return Response(SecAggStateOutput(state).data, status=code)

    def _shares_message(self, request: Request, round_id: int, send: Any) -> Response:
        """Share and reveal messages: ``{"shares": {index: base64}}`` to the phase's service."""
        data = SharesInput(data=request.data)
        data.is_valid(raise_exception=True)
        fl_round = round_for_merchant(round_id=round_id, merchant=self.merchant)
        shares = _indexed(data.validated_data["shares"], field="shares")
        return self._state(round_id, send(fl_round, self.merchant, shares))


class SecAggStateApi(_SecAggView):
    @extend_schema(
        tags=["secure aggregation"],
        responses=SecAggStateOutput,
        summary="My secure-aggregation state: phase, deadline, neighbours, shares for me",
    )
    def get(self, request: Request, round_id: int) -> Response:
        return self._state(round_id)


class SecAggKeysApi(_SecAggView):
    @extend_schema(
        tags=["secure aggregation"],
        request=KeysInput,
        responses={201: SecAggStateOutput, 200: SecAggStateOutput},
        summary="Advertise phase: my mask public key for this round",
    )
    def post(self, request: Request, round_id: int) -> Response:
        data = KeysInput(data=request.data)
        data.is_valid(raise_exception=True)
        fl_round = round_for_merchant(round_id=round_id, merchant=self.merchant)
        key = secagg.decode_b64(data.validated_data["s_public_key"], field="s_public_key")
        created = secagg.advertise(fl_round=fl_round, merchant=self.merchant, s_public_key=key)
        return self._state(round_id, created)


class SecAggSharesApi(_SecAggView):
    @extend_schema(
        tags=["secure aggregation"],
        request=SharesInput,
        responses={201: SecAggStateOutput, 200: SecAggStateOutput},
        summary="Share phase: one sealed share bundle per holder (my neighbours and me)",
    )
    def post(self, request: Request, round_id: int) -> Response:
        return self._shares_message(
            request,
            round_id,
            lambda fl_round, merchant, shares: secagg.share(
                fl_round=fl_round, merchant=merchant, sealed=shares
            ),
        )


class SecAggMaskedApi(_SecAggView):
    parser_classes = [BinaryBody]

    @extend_schema(
        tags=["secure aggregation"],
        request={BINARY: OpenApiTypes.BINARY},
        parameters=[
            OpenApiParameter("metrics", str, description='JSON object, e.g. {"loss": 0.41}')
        ],
        responses={201: SecAggStateOutput, 200: SecAggStateOutput},
        summary="Mask phase: my masked input, one uint32 safetensors tensor 'masked'",
    )
    def put(self, request: Request, round_id: int) -> Response:
        fl_round = round_for_merchant(round_id=round_id, merchant=self.merchant)
        metrics = _metrics_param(request.query_params.get("metrics"))
        secagg.member_for(fl_round=fl_round, merchant=self.merchant)
        body = binary_body(request)
        with artifacts.receive(body, max_bytes=settings.FLPORTAL_MAX_UPDATE_BYTES) as blob:
            created = secagg.mask(
                fl_round=fl_round, merchant=self.merchant, blob=blob, metrics=metrics
            )
        return self._state(round_id, created)


class SecAggRevealApi(_SecAggView):
    @extend_schema(
        tags=["secure aggregation"],
        request=SharesInput,
        responses={201: SecAggStateOutput, 200: SecAggStateOutput},
        summary="Unmask phase: per neighbour, its share of b (survived) or of s (dropped)",
    )
    def post(self, request: Request, round_id: int) -> Response:
        return self._shares_message(
            request,
            round_id,
            lambda fl_round, merchant, shares: secagg.reveal(
                fl_round=fl_round, merchant=merchant, shares=shares
            ),
        )
