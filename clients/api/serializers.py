from __future__ import annotations

from rest_framework import serializers

from clients.models import ApiToken, Merchant


class MerchantOutput(serializers.ModelSerializer):
    class Meta:
        model = Merchant
        fields = [
            "id",
            "name",
            "slug",
            "status",
            "category",
            "region",
            "size_band",
            "contact_email",
            "public_key",
            "created_at",
        ]


class MerchantCreateInput(serializers.Serializer):
    name = serializers.CharField(max_length=200)
    slug = serializers.SlugField(max_length=64, required=False, default="")
    category = serializers.CharField(max_length=64, required=False, default="")
    region = serializers.CharField(max_length=64, required=False, default="")
    size_band = serializers.CharField(max_length=16, required=False, default="")
    contact_email = serializers.EmailField(required=False, default="")
    status = serializers.CharField(max_length=16, required=False, default="pending")


class MerchantStatusInput(serializers.Serializer):
    status = serializers.ChoiceField(choices=Merchant.Status.values)


class TokenOutput(serializers.ModelSerializer):
    merchant = serializers.SlugRelatedField(slug_field="slug", read_only=True)

    class Meta:
        model = ApiToken
        fields = [
            "id",
            "merchant",
            "label",
            "prefix",
            "created_at",
            "expires_at",
            "revoked_at",
            "last_used_at",
        ]


class TokenIssueInput(serializers.Serializer):
    label = serializers.CharField(max_length=100, required=False, default="")
    expires_at = serializers.DateTimeField(required=False, allow_null=True, default=None)


class TokenIssuedOutput(TokenOutput):
    token = serializers.CharField(help_text="The plaintext token. Shown once, never again.")

    class Meta(TokenOutput.Meta):
        fields = [*TokenOutput.Meta.fields, "token"]


class PublicKeyInput(serializers.Serializer):
    public_key = serializers.CharField(max_length=64, help_text="base64 of 32 raw bytes")
