from __future__ import annotations

from typing import Any

from django.urls import reverse
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from rounds.models import FederatedModel, ModelVersion, Round, Update
from rounds.services.lifecycle import round_training_hints


class PrivacySettingsSchema(serializers.Serializer):
    """Central DP settings of a model (documentation; ``rounds.services.privacy`` validates).
    An empty object means no DP; otherwise the first four are required."""

    clip_norm = serializers.FloatField(
        required=False,
        help_text="L2 clip norm C of each merchant's change, in (0, 1e6]; with adaptive "
        "clipping the first round's",
    )
    noise_multiplier = serializers.FloatField(
        required=False,
        help_text="z in (0, 1000]: the round costs what Gaussian noise z*C on the sum costs",
    )
    delta = serializers.FloatField(required=False, help_text="target delta in (0, 0.01]")
    epsilon_budget = serializers.FloatField(
        required=False, help_text="total epsilon budget in (0, 1000]"
    )
    accountant = serializers.ChoiceField(choices=["rdp", "pld"], required=False, default="rdp")
    clipping = serializers.ChoiceField(
        choices=["fixed", "adaptive"],
        required=False,
        default="fixed",
        help_text="adaptive: the clip norm tracks a quantile of the update norms "
        "(Andrew et al. 2021); the sum's noise multiplier becomes "
        "z_delta = (z^-2 - (2 clip_count_stddev)^-2)^-1/2 so the round costs the same epsilon",
    )
    clip_mode = serializers.ChoiceField(
        choices=["server", "client"],
        required=False,
        default="server",
        help_text="client: merchants clip their change to the round's dp_clip_norm training "
        "hint before upload (needed for secure aggregation); the server still clips every "
        "update it sees",
    )
    target_quantile = serializers.FloatField(
        required=False, default=0.5, help_text="adaptive only: gamma in (0, 1)"
    )
    clip_learning_rate = serializers.FloatField(
        required=False,
        default=0.2,
        help_text="adaptive only: eta_C in (0, 10]; next C = C * exp(-eta_C * (b - gamma))",
    )
    clip_count_stddev = serializers.FloatField(
        required=False,
        help_text="adaptive only, required: sigma_b, the noise on the count of updates within "
        "C; must exceed noise_multiplier / 2 (about expected participants / 20 is typical)",
    )


@extend_schema_field(PrivacySettingsSchema)
class PrivacyField(serializers.DictField):
    """A privacy settings object, passed whole to the service that validates it."""


class SecureAggregationSchema(serializers.Serializer):
    """Secure-aggregation settings ({} = off; ``rounds.services.secagg`` validates)."""

    neighbours = serializers.IntegerField(
        required=False,
        allow_null=True,
        help_text="SecAgg+ neighbours per merchant (even); null: everyone (plain SecAgg)",
    )
    threshold = serializers.IntegerField(
        required=False,
        allow_null=True,
        help_text="Shamir threshold t; null: more than half of each merchant's share holders",
    )
    clip_range = serializers.FloatField(
        required=False, default=1.0, help_text="each coordinate of a change is clipped to +-c"
    )
    max_weight = serializers.IntegerField(
        required=False, default=100_000, help_text="a merchant's weight: min(examples, this)"
    )
    phase_seconds = serializers.IntegerField(
        required=False, default=60, help_text="deadline of each key/share/unmask phase"
    )


@extend_schema_field(SecureAggregationSchema)
class SecureAggregationField(serializers.DictField):
    """Secure-aggregation settings, passed whole to the service that validates them."""


class TensorSpecSerializer(serializers.Serializer):
    name = serializers.CharField()
    shape = serializers.ListField(child=serializers.IntegerField(min_value=1))
    dtype = serializers.ChoiceField(choices=["float16", "float32", "float64"])


def weights_url(version: ModelVersion) -> str:
    return reverse(
        "version-weights", kwargs={"slug": version.fl_model.slug, "number": version.number}
    )


class VersionOutput(serializers.ModelSerializer):
    weights_url = serializers.SerializerMethodField()
    produced_by_round = serializers.IntegerField(source="produced_by_id", allow_null=True)

    class Meta:
        model = ModelVersion
        fields = [
            "number",
            "sha256",
            "size_bytes",
            "weights_url",
            "produced_by_round",
            "strategy",
            "strategy_params",
            "aggregation",
            "metrics",
            "created_at",
        ]

    def get_weights_url(self, version: ModelVersion) -> str:
        return weights_url(version)


class MerchantVersionOutput(VersionOutput):
    """A version as merchants see it: no aggregation report (which merchants Krum kept, how
    many updates were clipped, update norms) and no pooled metrics of other merchants."""

    class Meta(VersionOutput.Meta):
        fields = [f for f in VersionOutput.Meta.fields if f not in {"aggregation", "metrics"}]


class UpdateOutput(serializers.ModelSerializer):
    round = serializers.IntegerField(source="fl_round_id")
    merchant = serializers.CharField(source="merchant.slug")

    class Meta:
        model = Update
        fields = [
            "round",
            "merchant",
            "status",
            "reason",
            "sha256",
            "size_bytes",
            "num_examples",
            "metrics",
            "created_at",
        ]


class MerchantRoundOutput(serializers.Serializer):
    """A round as a merchant sees it: what to download, how to train, whether I already sent."""

    id = serializers.IntegerField()
    number = serializers.IntegerField()
    model = serializers.CharField(source="fl_model.slug")
    status = serializers.CharField()
    deadline_at = serializers.DateTimeField(allow_null=True)
    base_version = MerchantVersionOutput()
    training_hints = serializers.SerializerMethodField()
    tensors = TensorSpecSerializer(source="fl_model.tensors", many=True)
    secure_aggregation = serializers.SerializerMethodField()
    my_update = serializers.SerializerMethodField()

    def get_secure_aggregation(self, fl_round: Round) -> bool:
        return bool(fl_round.secagg)

    def get_training_hints(self, fl_round: Round) -> dict[str, Any]:
        return round_training_hints(fl_round)

    def get_my_update(self, fl_round: Round) -> dict[str, Any] | None:
        mine = self.context["my_updates"].get(fl_round.pk)
        return UpdateOutput(mine).data if mine else None


class PendingEvaluationOutput(serializers.Serializer):
    model = serializers.CharField(source="fl_model.slug")
    version = serializers.IntegerField(source="number")
    sha256 = serializers.CharField()
    weights_url = serializers.SerializerMethodField()

    def get_weights_url(self, version: ModelVersion) -> str:
        return weights_url(version)


class PendingEvaluationListOutput(serializers.Serializer):
    results = PendingEvaluationOutput(many=True)


class EvaluationInput(serializers.Serializer):
    num_examples = serializers.IntegerField(min_value=1, max_value=10**12)
    metrics = serializers.DictField(help_text="name → finite number, at most 32")


class EvaluationOutput(serializers.Serializer):
    model = serializers.CharField(source="version.fl_model.slug")
    version = serializers.IntegerField(source="version.number")
    merchant = serializers.CharField(source="merchant.slug")
    num_examples = serializers.IntegerField()
    metrics = serializers.DictField()
    created_at = serializers.DateTimeField()


class EvaluationSummaryOutput(serializers.Serializer):
    version = serializers.IntegerField()
    evaluators = serializers.IntegerField()
    num_examples = serializers.IntegerField()
    metrics = serializers.DictField()
    merchants = serializers.DictField()


class MerchantRoundListOutput(serializers.Serializer):
    results = MerchantRoundOutput(many=True)


class FederatedModelOutput(serializers.ModelSerializer):
    tensors = TensorSpecSerializer(many=True)
    latest_version = serializers.SerializerMethodField()

    class Meta:
        model = FederatedModel
        fields = [
            "id",
            "name",
            "slug",
            "description",
            "tensors",
            "strategy",
            "strategy_params",
            "training_hints",
            "privacy",
            "secure_aggregation",
            "latest_version",
            "created_at",
        ]

    def get_latest_version(self, fl_model: FederatedModel) -> int | None:
        return self.context["latest"].get(fl_model.pk)


class FederatedModelCreateInput(serializers.Serializer):
    name = serializers.CharField(max_length=200)
    slug = serializers.SlugField(max_length=64, required=False, default="")
    description = serializers.CharField(required=False, default="", allow_blank=True)
    tensors = TensorSpecSerializer(many=True, required=False)
    template = serializers.CharField(required=False, help_text="see GET /api/v1/operator/templates")
    dims = serializers.DictField(required=False, help_text="the template's dimensions")
    training_hints = serializers.DictField(
        required=False,
        default=dict,
        help_text="epochs (int), learning_rate, batch_size (int), proximal_mu; others refused",
    )
    strategy = serializers.CharField(
        required=False, default="fedavg", help_text="see GET /api/v1/operator/strategies"
    )
    strategy_params = serializers.DictField(required=False, default=dict)
    init = serializers.ChoiceField(choices=["random", "zeros", "none"], default="random")
    privacy = PrivacyField(required=False, help_text="central DP settings (optional)")
    secure_aggregation = SecureAggregationField(
        required=False, help_text="secure aggregation settings (optional)"
    )
    seed = serializers.IntegerField(min_value=0, max_value=2**32 - 1, default=0)


class PrivacyLedgerEntryOutput(serializers.Serializer):
    round = serializers.IntegerField()
    status = serializers.CharField()
    q = serializers.FloatField(help_text="sampling rate")
    noise_multiplier = serializers.FloatField()
    epsilon_after = serializers.FloatField()
    clipping = serializers.CharField()
    clip_mode = serializers.CharField()
    clip_norm = serializers.FloatField(help_text="the clip norm in force in this round")
    delta_noise_multiplier = serializers.FloatField(required=False)
    clip_count_stddev = serializers.FloatField(required=False)
    unclipped_fraction = serializers.FloatField(
        required=False, allow_null=True, help_text="noisy fraction of updates within the norm"
    )
    next_clip_norm = serializers.FloatField(required=False, allow_null=True)


class PrivacyReportOutput(serializers.Serializer):
    enabled = serializers.BooleanField()
    epsilon_budget = serializers.FloatField(required=False)
    epsilon_spent = serializers.FloatField(required=False)
    epsilon_remaining = serializers.FloatField(required=False)
    delta = serializers.FloatField(required=False)
    noise_multiplier = serializers.FloatField(required=False)
    clip_norm = serializers.FloatField(required=False, help_text="the configured (first) clip norm")
    accountant = serializers.CharField(required=False)
    clipping = serializers.CharField(required=False, help_text="fixed or adaptive")
    clip_mode = serializers.CharField(required=False, help_text="server or client")
    current_clip_norm = serializers.FloatField(
        required=False, help_text="the clip norm the next round uses"
    )
    target_quantile = serializers.FloatField(required=False)
    clip_learning_rate = serializers.FloatField(required=False)
    clip_count_stddev = serializers.FloatField(required=False)
    delta_noise_multiplier = serializers.FloatField(
        required=False, help_text="adaptive: the noise multiplier on the sum, z_delta"
    )
    ledger = PrivacyLedgerEntryOutput(many=True)


class TemplateOutput(serializers.Serializer):
    name = serializers.CharField()
    label = serializers.CharField()
    description = serializers.CharField()
    dims = serializers.DictField(help_text="dimension → default (0: required)")
    training_hints = serializers.DictField(source="hints")
    strategy = serializers.CharField()


class FederatedModelUpdateInput(serializers.Serializer):
    description = serializers.CharField(required=False, allow_blank=True)
    privacy = PrivacyField(required=False, help_text="{} turns DP off")
    secure_aggregation = SecureAggregationField(required=False, help_text="{} turns it off")
    strategy = serializers.CharField(required=False)
    strategy_params = serializers.DictField(required=False)
    training_hints = serializers.DictField(required=False)


class StrategyParamOutput(serializers.Serializer):
    name = serializers.CharField()
    default = serializers.FloatField(allow_null=True)
    constraint = serializers.CharField()
    help = serializers.CharField()


class StrategyOutput(serializers.Serializer):
    name = serializers.CharField()
    label = serializers.CharField()
    parallel = serializers.BooleanField()
    params = StrategyParamOutput(many=True)


class CohortInput(serializers.Serializer):
    category = serializers.ListField(child=serializers.CharField(), required=False)
    region = serializers.ListField(child=serializers.CharField(), required=False)
    size_band = serializers.ListField(child=serializers.CharField(), required=False)


class SelectionInput(serializers.Serializer):
    """Who is invited when the round opens; omitted or {}: every active merchant."""

    fraction = serializers.FloatField(
        required=False, help_text="in (0, 1]: invite this share of the eligible merchants"
    )
    over_selection = serializers.FloatField(
        required=False, help_text="in [0, 1]: invite this much more to absorb drop-outs (0.2)"
    )
    cohort = CohortInput(
        required=False,
        help_text="only active merchants with these attributes (values OR, attributes AND)",
    )


class RoundCreateInput(serializers.Serializer):
    model = serializers.SlugField()
    min_updates = serializers.IntegerField(min_value=1, max_value=1_000_000)
    target_updates = serializers.IntegerField(
        min_value=1, max_value=1_000_000, required=False, allow_null=True, default=None
    )
    duration_seconds = serializers.IntegerField(min_value=1, max_value=30 * 24 * 3600, default=600)
    opens_at = serializers.DateTimeField(required=False, allow_null=True, default=None)
    count = serializers.IntegerField(
        min_value=1, max_value=100, default=1, help_text="schedule a series of this many rounds"
    )
    interval_seconds = serializers.IntegerField(
        required=False,
        allow_null=True,
        default=None,
        help_text="space a series: round i opens at opens_at + i * interval (60 s to 30 days); "
        "without it the rounds run back to back",
    )
    selection = SelectionInput(required=False, default=dict)


class RoundOutput(serializers.Serializer):
    """The operator's view of a round; produced from ``services.round_snapshot``."""

    id = serializers.IntegerField()
    model = serializers.CharField()
    number = serializers.IntegerField()
    status = serializers.CharField()
    strategy = serializers.CharField()
    strategy_params = serializers.DictField()
    aggregation = serializers.DictField()
    privacy = serializers.DictField()
    min_updates = serializers.IntegerField()
    target_updates = serializers.IntegerField()
    participants = serializers.IntegerField()
    selection = serializers.DictField()
    series = serializers.UUIDField(allow_null=True)
    submitted = serializers.IntegerField()
    base_version = serializers.IntegerField(allow_null=True)
    result_version = serializers.IntegerField(allow_null=True)
    metrics = serializers.DictField()
    opens_at = serializers.DateTimeField()
    opened_at = serializers.DateTimeField(allow_null=True)
    deadline_at = serializers.DateTimeField(allow_null=True)
    closed_at = serializers.DateTimeField(allow_null=True)
    finished_at = serializers.DateTimeField(allow_null=True)
    failure_reason = serializers.CharField()
    updates = serializers.ListField(child=serializers.DictField())
