from __future__ import annotations

from drf_spectacular.utils import extend_schema
from rest_framework import status
from rest_framework.request import Request
from rest_framework.response import Response

from clients import services
from clients.api.serializers import (
    MerchantCreateInput,
    MerchantOutput,
    MerchantStatusInput,
    PublicKeyInput,
    TokenIssuedOutput,
    TokenIssueInput,
    TokenOutput,
)
from clients.models import ApiToken, Merchant
from flportal.api import IsMerchant, MerchantApiView, OperatorApiView
from flportal.errors import NotFound


class MeApi(MerchantApiView):
    permission_classes = [IsMerchant]  # a suspended merchant may still see its own status

    @extend_schema(tags=["merchant"], responses=MerchantOutput, summary="The calling merchant")
    def get(self, request: Request) -> Response:
        return Response(MerchantOutput(self.merchant).data)


class MyPublicKeyApi(MerchantApiView):
    permission_classes = [IsMerchant]

    @extend_schema(
        tags=["merchant"],
        request=PublicKeyInput,
        responses=MerchantOutput,
        summary="Register my X25519 public key for secure aggregation",
        description="Base64 of the raw 32-byte key. Rounds that open afterwards use it to seal "
        "the Shamir shares other merchants send me. Idempotent.",
    )
    def put(self, request: Request) -> Response:
        data = PublicKeyInput(data=request.data)
        data.is_valid(raise_exception=True)
        merchant = services.merchant_register_key(
            merchant=self.merchant, public_key=data.validated_data["public_key"]
        )
        return Response(MerchantOutput(merchant).data)


class MerchantListApi(OperatorApiView):
    @extend_schema(tags=["operator"], responses=MerchantOutput(many=True))
    def get(self, request: Request) -> Response:
        return Response(MerchantOutput(Merchant.objects.all(), many=True).data)

    @extend_schema(tags=["operator"], request=MerchantCreateInput, responses={201: MerchantOutput})
    def post(self, request: Request) -> Response:
        data = MerchantCreateInput(data=request.data)
        data.is_valid(raise_exception=True)
        merchant = services.merchant_create(**data.validated_data, actor=request.user)
        return Response(MerchantOutput(merchant).data, status=status.HTTP_201_CREATED)


class MerchantDetailApi(OperatorApiView):
    @extend_schema(tags=["operator"], responses=MerchantOutput)
    def get(self, request: Request, slug: str) -> Response:
        return Response(MerchantOutput(services.merchant_get(slug=slug)).data)


class MerchantStatusApi(OperatorApiView):
    @extend_schema(
        tags=["operator"],
        request=MerchantStatusInput,
        responses=MerchantOutput,
        summary="Approve, suspend or reactivate a merchant",
    )
    def post(self, request: Request, slug: str) -> Response:
        data = MerchantStatusInput(data=request.data)
        data.is_valid(raise_exception=True)
        merchant = services.merchant_set_status(
            merchant=services.merchant_get(slug=slug),
            status=data.validated_data["status"],
            actor=request.user,
        )
        return Response(MerchantOutput(merchant).data)


class TokenListApi(OperatorApiView):
    @extend_schema(tags=["operator"], responses=TokenOutput(many=True))
    def get(self, request: Request, slug: str) -> Response:
        merchant = services.merchant_get(slug=slug)
        return Response(TokenOutput(merchant.tokens.select_related("merchant"), many=True).data)

    @extend_schema(
        tags=["operator"],
        request=TokenIssueInput,
        responses={201: TokenIssuedOutput},
        summary="Issue a token; the plaintext is in this response only",
    )
    def post(self, request: Request, slug: str) -> Response:
        data = TokenIssueInput(data=request.data)
        data.is_valid(raise_exception=True)
        token, plaintext = services.token_issue(
            merchant=services.merchant_get(slug=slug), actor=request.user, **data.validated_data
        )
        body = TokenOutput(token).data | {"token": plaintext}
        return Response(body, status=status.HTTP_201_CREATED)


class TokenRevokeApi(OperatorApiView):
    @extend_schema(
        tags=["operator"], request=None, responses=TokenOutput, summary="Revoke a token for good"
    )
    def post(self, request: Request, token_id: int) -> Response:
        token = ApiToken.objects.select_related("merchant").filter(pk=token_id).first()
        if token is None:
            raise NotFound(f"No token {token_id}.", code="token_not_found")
        return Response(TokenOutput(services.token_revoke(token=token, actor=request.user)).data)
