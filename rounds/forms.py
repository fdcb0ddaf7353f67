"""Portal forms for federated models and round scheduling. They check what a form can (types,
ranges, fields that belong together) and turn input into the arguments of one service call;
every business rule stays in ``rounds.services``, whose errors the views put back on the form."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from django import forms
from django.conf import settings
from django.forms import BoundField

from clients.models import Merchant
from rounds import aggregation
from rounds.models import FederatedModel
from rounds.services.fl_models import HINT_BOUNDS
from rounds.templates import TEMPLATES

STRATEGY_CHOICES = [(name, label) for name, label in aggregation.LABELS.items()]
UNIT_SECONDS = {"minutes": 60, "hours": 3600}
UNIT_CHOICES = [("minutes", "minutes"), ("hours", "hours")]
DATETIME_LOCAL = forms.DateTimeInput(attrs={"type": "datetime-local"}, format="%Y-%m-%dT%H:%M")


class _ModelIdentity(forms.Form):
    name = forms.CharField(max_length=200)
    slug = forms.SlugField(
        max_length=64, required=False, help_text="Leave empty to derive it from the name."
    )
    description = forms.CharField(
        required=False, widget=forms.Textarea(attrs={"rows": 2}), max_length=2000
    )


class TemplateModelForm(_ModelIdentity):
    """A model from the template registry (``rounds.templates``): its tensors, first weights,
    training hints and strategy. Each template's dimensions are fields of their own."""

    template = forms.ChoiceField(
        choices=[(t.name, t.label) for t in TEMPLATES.values()], widget=forms.RadioSelect
    )
    strategy = forms.ChoiceField(
        choices=[("", "The template's default"), *STRATEGY_CHOICES],
        required=False,
        help_text="Can be changed later on the model's settings page.",
    )

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        for template in TEMPLATES.values():
            for dim, default in template.dims.items():
                self.fields[self.dim_field(template.name, dim)] = forms.IntegerField(
                    label=dim,
                    required=False,
                    min_value=1,
                    max_value=100_000_000,
                    initial=default or None,
                    help_text="required" if not default else f"default {default}",
                )

    @staticmethod
    def dim_field(template: str, dim: str) -> str:
        return f"dim-{template}-{dim}"

    def dim_groups(self) -> Iterator[tuple[str, str, str, list[BoundField]]]:
        """(template name, label, description, its dimension fields) for the page."""
        for t in TEMPLATES.values():
            bound = [self[self.dim_field(t.name, dim)] for dim in t.dims]
            yield t.name, t.label, t.description, bound

    def clean(self) -> dict[str, Any]:
        data = super().clean()
        chosen = TEMPLATES.get(data.get("template") or "")
        if chosen is None:
            return data
        dims: dict[str, int] = {}
        for dim, default in chosen.dims.items():
            field = self.dim_field(chosen.name, dim)
            value = data.get(field)
            if value is None and not default and field not in self.errors:
                self.add_error(field, f"{chosen.label} needs {dim}.")
            elif value is not None:
                dims[dim] = value
        data["dims"] = dims
        return data


class UploadModelForm(_ModelIdentity):
    """A model defined by its initial weights: a safetensors file (tensors read from it)."""

    weights = forms.FileField(
        label="Initial weights (.safetensors)",
        help_text="Named float16/32/64 tensors; they define the model's shape and become v1.",
    )
    strategy = forms.ChoiceField(choices=STRATEGY_CHOICES, initial="fedavg")

    def clean_weights(self) -> Any:
        upload = self.cleaned_data["weights"]
        limit = settings.FLPORTAL_MAX_UPDATE_BYTES
        if upload.size > limit:
            raise forms.ValidationError(f"The file is larger than the limit of {limit} bytes.")
        if upload.size == 0:
            raise forms.ValidationError("The file is empty.")
        return upload


class VersionUploadForm(forms.Form):
    weights = forms.FileField(
        label="Weights (.safetensors)",
        help_text="Must match the model's tensors; becomes the next version (no round running).",
    )

    clean_weights = UploadModelForm.clean_weights


class ModelSettingsForm(forms.Form):
    """Strategy and its parameters, central DP, local-training hints and the description:
    one ``fl_model_update``. Each strategy's parameters are fields of their own."""

    description = forms.CharField(
        required=False, widget=forms.Textarea(attrs={"rows": 2}), max_length=2000
    )
    strategy = forms.ChoiceField(choices=STRATEGY_CHOICES)
    clip_norm = forms.FloatField(
        required=False,
        label="Clip updates to L2 norm",
        help_text=aggregation.CLIP_NORM.help + "; empty: no clipping",
    )
    epochs = forms.IntegerField(required=False, min_value=1, max_value=1000)
    learning_rate = forms.FloatField(required=False, min_value=0, max_value=100)
    batch_size = forms.IntegerField(required=False, min_value=1, max_value=1_000_000)
    proximal_mu = forms.FloatField(required=False, min_value=0, max_value=1000)
    dp_enabled = forms.BooleanField(required=False, label="Central differential privacy")
    dp_clip_norm = forms.FloatField(
        required=False, label="Clip norm", help_text="each merchant's change is clipped to this"
    )
    dp_noise_multiplier = forms.FloatField(
        required=False, label="Noise multiplier", help_text="Gaussian noise std / clip norm"
    )
    dp_delta = forms.FloatField(required=False, label="Delta", help_text="e.g. 1e-5")
    dp_epsilon_budget = forms.FloatField(
        required=False, label="Epsilon budget", help_text="rounds that would exceed it are refused"
    )
    dp_accountant = forms.ChoiceField(
        choices=[("rdp", "RDP"), ("pld", "PLD")], initial="rdp", label="Accountant"
    )
    secagg_enabled = forms.BooleanField(
        required=False,
        label="Secure aggregation",
        help_text="Merchants mask their updates so the server only sees the sum (FedAvg or "
        "FedProx without server-side clipping). Fine-tune it through the operator API.",
    )

    HINTS = ("epochs", "learning_rate", "batch_size", "proximal_mu")
    DP = ("clip_norm", "noise_multiplier", "delta", "epsilon_budget")

    def __init__(self, *args: Any, fl_model: FederatedModel, **kwargs: Any) -> None:
        self.fl_model = fl_model
        initial = {
            "description": fl_model.description,
            "strategy": fl_model.strategy,
            "clip_norm": fl_model.strategy_params.get("clip_norm"),
            **{hint: fl_model.training_hints.get(hint) for hint in self.HINTS},
            "dp_enabled": bool(fl_model.privacy),
            **{f"dp_{key}": fl_model.privacy.get(key) for key in self.DP},
            "dp_accountant": fl_model.privacy.get("accountant", "rdp"),
            "secagg_enabled": bool(fl_model.secure_aggregation),
        }
        super().__init__(*args, initial=initial, **kwargs)
        for hint in self.HINTS:
            low, high = HINT_BOUNDS[hint]
            self.fields[hint].help_text = f"in [{low:g}, {high:g}]; empty: not sent"
        for strategy, schema in aggregation.STRATEGIES.items():
            for name, param in schema.items():
                kind = forms.IntegerField if param.integer else forms.FloatField
                current = (
                    fl_model.strategy_params.get(name)
                    if strategy == fl_model.strategy
                    else param.default
                )
                self.fields[self.param_field(strategy, name)] = kind(
                    label=name,
                    required=False,
                    initial=current,
                    help_text=f"{param.help + '; ' if param.help else ''}{param.describe()}"
                    f"{'' if param.default is None else f', default {param.default:g}'}",
                )

    @staticmethod
    def param_field(strategy: str, name: str) -> str:
        return f"param-{strategy}-{name}"

    def param_groups(self) -> Iterator[tuple[str, str, list[BoundField]]]:
        for strategy, schema in aggregation.STRATEGIES.items():
            if schema:
                bound = [self[self.param_field(strategy, name)] for name in schema]
                yield strategy, aggregation.LABELS[strategy], bound

    def clean(self) -> dict[str, Any]:
        data = super().clean()
        if data.get("dp_enabled"):
            for key in self.DP:
                if data.get(f"dp_{key}") is None and f"dp_{key}" not in self.errors:
                    self.add_error(f"dp_{key}", "Required with differential privacy.")
        return data

    def changes(self) -> dict[str, Any]:
        """The keyword arguments of ``fl_model_update``."""
        data = self.cleaned_data
        strategy = data["strategy"]
        params = {
            name: data[self.param_field(strategy, name)]
            for name in aggregation.STRATEGIES[strategy]
            if data.get(self.param_field(strategy, name)) is not None
        }
        if data.get("clip_norm") is not None:
            params["clip_norm"] = data["clip_norm"]
        privacy: dict[str, Any] = {}
        if data.get("dp_enabled"):  # settings this form does not show are kept as they are
            privacy = {**self.fl_model.privacy, **{key: data[f"dp_{key}"] for key in self.DP}}
            privacy["accountant"] = data["dp_accountant"]
        secagg: Any = {}
        if data.get("secagg_enabled"):
            secagg = self.fl_model.secure_aggregation or True  # on: as tuned, or the defaults
        return {
            "description": data["description"],
            "strategy": strategy,
            "strategy_params": params,
            "training_hints": {h: data[h] for h in self.HINTS if data.get(h) is not None},
            "privacy": privacy,
            "secure_aggregation": secagg,
        }


def _distinct_active(field: str) -> list[tuple[str, str]]:
    values = (
        Merchant.objects.filter(status=Merchant.Status.ACTIVE)
        .exclude(**{field: ""})
        .order_by(field)
        .values_list(field, flat=True)
        .distinct()
    )
    return [(v, v) for v in values]


class ScheduleRoundForm(forms.Form):
    """One round now or at a time, or a series every N minutes/hours; quorum, target and
    duration; and who is invited (all active, a random fraction with over-selection, and/or a
    cohort by category, region and size band)."""

    model = forms.ModelChoiceField(
        queryset=FederatedModel.objects.all(), to_field_name="slug", empty_label=None
    )
    when = forms.ChoiceField(
        choices=[("now", "Open now"), ("at", "At a time"), ("series", "A recurring series")],
        widget=forms.RadioSelect,
        initial="now",
    )
    opens_at = forms.DateTimeField(
        required=False,
        label="Opens at (UTC)",
        widget=DATETIME_LOCAL,
        help_text="For one round at a time; for a series the first round (empty: now).",
    )
    count = forms.IntegerField(
        required=False, min_value=2, max_value=100, initial=5, label="Rounds in the series"
    )
    every = forms.IntegerField(required=False, min_value=1, max_value=43_200, initial=1)
    every_unit = forms.ChoiceField(choices=UNIT_CHOICES, initial="hours", label="Unit")
    min_updates = forms.IntegerField(
        min_value=1, max_value=1_000_000, initial=2, label="Quorum (minimum updates)"
    )
    target_updates = forms.IntegerField(
        required=False,
        min_value=1,
        max_value=1_000_000,
        label="Target updates",
        help_text="Close as soon as this many arrive. Empty: the quorum, or with a fraction "
        "the number of merchants the fraction asks for.",
    )
    duration = forms.IntegerField(min_value=1, max_value=43_200, initial=10)
    duration_unit = forms.ChoiceField(choices=UNIT_CHOICES, initial="minutes", label="Unit")
    participants = forms.ChoiceField(
        choices=[("all", "All active merchants"), ("fraction", "A random fraction")],
        widget=forms.RadioSelect,
        initial="all",
    )
    fraction_percent = forms.FloatField(
        required=False, min_value=0.01, max_value=100, initial=30, label="Fraction (%)"
    )
    over_selection_percent = forms.FloatField(
        required=False,
        min_value=0,
        max_value=100,
        initial=20,
        label="Over-selection (%)",
        help_text="Invite this much more than the fraction to absorb drop-outs.",
    )
    category = forms.MultipleChoiceField(
        required=False, widget=forms.CheckboxSelectMultiple, label="Category"
    )
    region = forms.MultipleChoiceField(
        required=False, widget=forms.CheckboxSelectMultiple, label="Region"
    )
    size_band = forms.MultipleChoiceField(
        required=False,
        widget=forms.CheckboxSelectMultiple,
        choices=Merchant.SizeBand.choices,
        label="Size band",
    )

    # service error code -> the field it belongs to
    ERROR_FIELDS = {
        "invalid_quorum": "min_updates",
        "quorum_too_small": "min_updates",
        "invalid_target": "target_updates",
        "invalid_duration": "duration",
        "invalid_opens_at": "opens_at",
        "invalid_count": "count",
        "invalid_interval": "every",
        "invalid_fraction": "fraction_percent",
        "invalid_over_selection": "over_selection_percent",
        "invalid_cohort": "category",
    }

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fields["category"].choices = _distinct_active("category")
        self.fields["region"].choices = _distinct_active("region")

    def clean(self) -> dict[str, Any]:
        data = super().clean()
        when = data.get("when")
        if when == "at" and data.get("opens_at") is None and "opens_at" not in self.errors:
            self.add_error("opens_at", "Give the time the round opens.")
        if when == "series":
            for name in ("count", "every"):
                if data.get(name) is None and name not in self.errors:
                    self.add_error(name, "Required for a series.")
        if (
            data.get("participants") == "fraction"
            and data.get("fraction_percent") is None
            and "fraction_percent" not in self.errors
        ):
            self.add_error("fraction_percent", "Give the share of merchants to invite.")
        return data

    def selection(self) -> dict[str, Any]:
        data = self.cleaned_data
        policy: dict[str, Any] = {}
        if data["participants"] == "fraction":
            policy["fraction"] = data["fraction_percent"] / 100
            policy["over_selection"] = (data.get("over_selection_percent") or 0.0) / 100
        cohort = {k: data[k] for k in ("category", "region", "size_band") if data.get(k)}
        if cohort:
            policy["cohort"] = cohort
        return policy

    def schedule(self) -> dict[str, Any]:
        """The keyword arguments of ``rounds_schedule`` (without the actor)."""
        data = self.cleaned_data
        when = data["when"]
        series = when == "series"
        return {
            "fl_model": data["model"],
            "min_updates": data["min_updates"],
            "target_updates": data.get("target_updates"),
            "duration_seconds": data["duration"] * UNIT_SECONDS[data["duration_unit"]],
            "opens_at": data.get("opens_at") if when != "now" else None,
            "count": data["count"] if series else 1,
            "interval_seconds": data["every"] * UNIT_SECONDS[data["every_unit"]]
            if series
            else None,
            "selection": self.selection(),
        }
