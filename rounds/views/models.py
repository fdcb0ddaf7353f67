"""Portal pages for federated models: the list, creating one (from a template or by uploading
its initial weights), its settings (strategy, privacy, training hints), and its detail page with
the version lineage, federated evaluations, privacy ledger and downloads of every version."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.contrib import messages
from django.db.models import Count
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseBase
from django.shortcuts import redirect, render
from django.utils.http import parse_etags
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from clients.sdk.codec import CodecError
from flportal.errors import DomainError
from flportal.roles import is_operator, operator_required, viewer_required
from rounds import aggregation, artifacts, services
from rounds.forms import ModelSettingsForm, TemplateModelForm, UploadModelForm, VersionUploadForm
from rounds.models import FederatedModel, ModelVersion
from rounds.services.privacy import privacy_report
from rounds.services.selection import describe
from rounds.templates import TEMPLATES

RECENT_ROUNDS = 20

# service error code -> the form field it belongs to (others go on top of the form)
_MODEL_ERROR_FIELDS = {
    "name_required": "name",
    "slug_taken": "slug",
    "invalid_slug": "slug",
    "unknown_template": "template",
    "unknown_strategy": "strategy",
    "invalid_strategy_params": "strategy",
    "invalid_hints": "epochs",
    "invalid_privacy": "dp_enabled",
    "dp_needs_fedavg": "dp_enabled",
    "invalid_secagg": "secagg_enabled",
    "secagg_needs_linear_strategy": "secagg_enabled",
    "secagg_needs_client_clipping": "secagg_enabled",
    "secagg_needs_fixed_clipping": "secagg_enabled",
}

_WEIGHTS_ERRORS = {
    code: "weights"
    for code in (
        "invalid_safetensors",
        "no_tensors",
        "unsupported_dtype",
        "invalid_tensors",
        "model_too_large",
        "non_finite_values",
        "shape_mismatch",
        "tensor_names_mismatch",
        "dtype_mismatch",
        "empty_body",
        "update_too_large",
    )
}


def _model_or_404(slug: str) -> FederatedModel:
    fl_model = FederatedModel.objects.filter(slug=slug).first()
    if fl_model is None:
        raise Http404("No such model.")
    return fl_model


def _put_error(form: Any, exc: DomainError, fields: dict[str, str]) -> None:
    field = fields.get(exc.code)
    form.add_error(field if field in form.fields else None, exc.detail)


# --- the list ---------------------------------------------------------------------------------


@viewer_required
@require_GET
def model_list(request: HttpRequest) -> HttpResponse:
    models = services.fl_models_overview()
    rows = [
        {
            "fl_model": m,
            "strategy_label": aggregation.LABELS.get(m.strategy, m.strategy),
            "privacy": privacy_report(m) if m.privacy else None,
        }
        for m in models
    ]
    return render(
        request,
        "models/model_list.html",
        {"rows": rows, "can_act": is_operator(request.user)},
    )


# --- creating a model -------------------------------------------------------------------------


def _create_page(
    request: HttpRequest,
    *,
    template_form: TemplateModelForm | None = None,
    upload_form: UploadModelForm | None = None,
    status: int = 200,
) -> HttpResponse:
    context = {
        "template_form": template_form or TemplateModelForm(prefix="tpl"),
        "upload_form": upload_form or UploadModelForm(prefix="upload"),
        "templates": TEMPLATES,
    }
    return render(request, "models/model_create.html", context, status=status)


@operator_required
@require_GET
def model_create(request: HttpRequest) -> HttpResponse:
    return _create_page(request)


@operator_required
@require_POST
def model_create_from_template(request: HttpRequest) -> HttpResponse:
    form = TemplateModelForm(request.POST, prefix="tpl")
    if form.is_valid():
        data = form.cleaned_data
        try:
            fl_model = services.fl_model_create_from_template(
                name=data["name"],
                slug=data["slug"],
                description=data["description"],
                template=data["template"],
                dims=data["dims"],
                strategy=data["strategy"] or None,
                actor=request.user,
            )
        except DomainError as exc:
            _put_error(form, exc, _MODEL_ERROR_FIELDS)
        else:
            messages.success(request, f"Created {fl_model.name} with version 1.")
            return redirect("rounds:model-detail", slug=fl_model.slug)
    return _create_page(request, template_form=form, status=400)


@operator_required
@require_POST
def model_create_from_upload(request: HttpRequest) -> HttpResponse:
    form = UploadModelForm(request.POST, request.FILES, prefix="upload")
    if form.is_valid():
        data = form.cleaned_data
        try:
            with artifacts.receive(
                data["weights"], max_bytes=settings.FLPORTAL_MAX_UPDATE_BYTES
            ) as blob:
                fl_model = services.fl_model_create_from_weights(
                    name=data["name"],
                    slug=data["slug"],
                    description=data["description"],
                    strategy=data["strategy"],
                    blob=blob,
                    actor=request.user,
                )
        except DomainError as exc:
            _put_error(form, exc, {**_MODEL_ERROR_FIELDS, **_WEIGHTS_ERRORS})
        else:
            messages.success(request, f"Created {fl_model.name} from the uploaded weights (v1).")
            return redirect("rounds:model-detail", slug=fl_model.slug)
    return _create_page(request, upload_form=form, status=400)


# --- settings ---------------------------------------------------------------------------------


@operator_required
@require_http_methods(["GET", "POST"])
def model_settings(request: HttpRequest, slug: str) -> HttpResponse:
    fl_model = _model_or_404(slug)
    form = ModelSettingsForm(request.POST or None, fl_model=fl_model)
    if request.method == "POST" and form.is_valid():
        try:
            services.fl_model_update(fl_model=fl_model, actor=request.user, **form.changes())
        except DomainError as exc:
            _put_error(form, exc, _MODEL_ERROR_FIELDS)
        else:
            messages.success(request, "Settings saved; they apply from the next round that opens.")
            return redirect("rounds:model-detail", slug=fl_model.slug)
    status = 400 if request.method == "POST" else 200
    context = {
        "fl_model": fl_model,
        "form": form,
        "privacy": privacy_report(fl_model),
    }
    return render(request, "models/model_settings.html", context, status=status)


# --- the detail page --------------------------------------------------------------------------


def _pairs(values: dict[str, Any]) -> list[tuple[str, str]]:
    """Metrics and aggregation details as (name, text) for a table cell."""

    def text(value: Any) -> str:
        if isinstance(value, float):
            return f"{value:.4g}"
        if isinstance(value, list):
            return ", ".join(text(v) for v in value)
        if isinstance(value, dict):
            return ", ".join(f"{k}={text(v)}" for k, v in value.items())
        return str(value)

    return [(key, text(value)) for key, value in values.items()]


def _lineage(fl_model: FederatedModel) -> list[dict[str, Any]]:
    """Every version, newest first: the round that produced it from which base version, the
    strategy and what it did, training metrics, and the merchants' federated evaluations."""
    evaluations = {e["version"]: e for e in services.evaluation_summary(fl_model=fl_model)}
    versions = fl_model.versions.select_related("produced_by__base_version").order_by("-number")
    return [
        {
            "version": v,
            "fl_round": v.produced_by,
            "base": v.produced_by.base_version if v.produced_by else None,
            "strategy_label": aggregation.LABELS.get(v.strategy, v.strategy),
            "strategy_params": _pairs(v.strategy_params),
            "aggregation": _pairs(v.aggregation),
            "metrics": _pairs(v.metrics),
            "evaluation": evaluations.get(v.number),
            "evaluation_metrics": _pairs(evaluations[v.number]["metrics"])
            if v.number in evaluations
            else [],
            "evaluation_merchants": [
                (slug, _pairs(values))
                for slug, values in sorted(evaluations[v.number]["merchants"].items())
            ]
            if v.number in evaluations
            else [],
        }
        for v in versions
    ]


def _rounds(fl_model: FederatedModel) -> list[dict[str, Any]]:
    rounds = (
        fl_model.rounds.select_related("result_version")
        .annotate(invited=Count("participants"))
        .order_by("-number")[:RECENT_ROUNDS]
    )
    return [{"fl_round": r, "selection": describe(r.selection)} for r in rounds]


@viewer_required
@require_GET
def model_detail(request: HttpRequest, slug: str) -> HttpResponse:
    fl_model = _model_or_404(slug)
    context = {
        "fl_model": fl_model,
        "strategy_label": aggregation.LABELS.get(fl_model.strategy, fl_model.strategy),
        "strategy_params": _pairs(fl_model.strategy_params),
        "training_hints": _pairs(fl_model.training_hints),
        "lineage": _lineage(fl_model),
        "rounds": _rounds(fl_model),
        "privacy": privacy_report(fl_model),
        "can_act": is_operator(request.user),
        "upload_form": VersionUploadForm(),
        "pending": fl_model.rounds.filter(status__in=["scheduled", "open"]).count(),
        "tensor_count": len(fl_model.tensors),
        "params": _param_count(fl_model),
    }
    return render(request, "models/model_detail.html", context)


def _param_count(fl_model: FederatedModel) -> int:
    total = 0
    for tensor in fl_model.tensors:
        size = 1
        for dim in tensor["shape"]:
            size *= dim
        total += size
    return total


@operator_required
@require_POST
def version_upload(request: HttpRequest, slug: str) -> HttpResponse:
    fl_model = _model_or_404(slug)
    form = VersionUploadForm(request.POST, request.FILES)
    if form.is_valid():
        try:
            with artifacts.receive(
                form.cleaned_data["weights"], max_bytes=settings.FLPORTAL_MAX_UPDATE_BYTES
            ) as blob:
                version = services.version_create(fl_model=fl_model, blob=blob, actor=request.user)
        except CodecError as exc:
            form.add_error("weights", exc.detail)
        except DomainError as exc:
            _put_error(form, exc, _WEIGHTS_ERRORS)
        else:
            messages.success(request, f"Uploaded version {version.number}.")
            return redirect("rounds:model-detail", slug=fl_model.slug)
    for error in form.errors.get("weights", []) + form.non_field_errors():
        messages.error(request, f"Upload refused: {error}")
    return redirect("rounds:model-detail", slug=fl_model.slug)


@viewer_required
@require_GET
def version_download(request: HttpRequest, slug: str, number: int) -> HttpResponseBase:
    """A version's weights (safetensors), with its sha256 as ETag: unchanged, not sent twice."""
    version = (
        ModelVersion.objects.select_related("fl_model")
        .filter(fl_model__slug=slug, number=number)
        .first()
    )
    if version is None:
        raise Http404("No such version.")
    etag = f'"{version.sha256}"'
    wanted = parse_etags(request.headers.get("If-None-Match", ""))
    if etag in wanted or "*" in wanted:
        response: HttpResponseBase = HttpResponse(status=304)
    else:
        response = artifacts.download_response(version.weights.name, request)
        response["Content-Type"] = "application/octet-stream"
        response["Content-Length"] = str(version.size_bytes)
        response["Content-Disposition"] = f'attachment; filename="{slug}-v{number}.safetensors"'
    response["ETag"] = etag
    response["Cache-Control"] = "private, max-age=0, must-revalidate"
    return response
