from django.urls import path

from rounds.api import merchant, operator, secagg

urlpatterns = [
    path("rounds", merchant.RoundListApi.as_view(), name="rounds"),
    path("rounds/<int:round_id>", merchant.RoundDetailApi.as_view(), name="round"),
    path("rounds/<int:round_id>/update", merchant.UpdateApi.as_view(), name="round-update"),
    path("rounds/<int:round_id>/secagg", secagg.SecAggStateApi.as_view(), name="secagg"),
    path("rounds/<int:round_id>/secagg/keys", secagg.SecAggKeysApi.as_view(), name="secagg-keys"),
    path(
        "rounds/<int:round_id>/secagg/shares",
        secagg.SecAggSharesApi.as_view(),
        name="secagg-shares",
    ),
    path(
        "rounds/<int:round_id>/secagg/masked",
        secagg.SecAggMaskedApi.as_view(),
        name="secagg-masked",
    ),
    path(
        "rounds/<int:round_id>/secagg/reveal",
        secagg.SecAggRevealApi.as_view(),
        name="secagg-reveal",
    ),
    path(
        "models/<slug:slug>/versions/<int:number>/weights",
        merchant.VersionWeightsApi.as_view(),
        name="version-weights",
    ),
    path(
        "evaluations/pending", merchant.PendingEvaluationsApi.as_view(), name="evaluations-pending"
    ),
    path(
        "models/<slug:slug>/versions/<int:number>/evaluation",
        merchant.EvaluationApi.as_view(),
        name="version-evaluation",
    ),
    path("operator/models", operator.ModelListApi.as_view(), name="op-models"),
    path(
        "operator/models/<slug:slug>/evaluations",
        operator.EvaluationSummaryApi.as_view(),
        name="op-evaluations",
    ),
    path("operator/models/<slug:slug>", operator.ModelDetailApi.as_view(), name="op-model"),
    path(
        "operator/models/<slug:slug>/versions",
        operator.VersionListApi.as_view(),
        name="op-versions",
    ),
    path(
        "operator/models/<slug:slug>/privacy",
        operator.PrivacyReportApi.as_view(),
        name="op-privacy",
    ),
    path("operator/templates", operator.TemplateListApi.as_view(), name="op-templates"),
    path("operator/strategies", operator.StrategyListApi.as_view(), name="op-strategies"),
    path("operator/rounds", operator.RoundListApi.as_view(), name="op-rounds"),
    path("operator/rounds/<int:round_id>", operator.RoundDetailApi.as_view(), name="op-round"),
    path(
        "operator/rounds/<int:round_id>/close",
        operator.RoundCloseApi.as_view(),
        name="op-round-close",
    ),
    path(
        "operator/rounds/<int:round_id>/cancel",
        operator.RoundCancelApi.as_view(),
        name="op-round-cancel",
    ),
]
