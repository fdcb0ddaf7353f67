"""Portal forms: login, merchant registration, status changes, tokens and the list filters."""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib.auth.forms import AuthenticationForm
from django.core.exceptions import ValidationError

from clients.models import Merchant
from flportal.roles import role_of


class PortalAuthenticationForm(AuthenticationForm):
    """Staff login that refuses accounts without a portal role (operator or viewer)."""

    error_messages = {
        **AuthenticationForm.error_messages,
        "no_portal_role": (
            "This account has no portal role. Ask an operator to run "
            "'manage.py portal_user <name> --role viewer' (or operator) for it."
        ),
    }

    def confirm_login_allowed(self, user: Any) -> None:
        super().confirm_login_allowed(user)
        if role_of(user) is None:
            raise ValidationError(self.error_messages["no_portal_role"], code="no_portal_role")


class MerchantCreateForm(forms.Form):
    name = forms.CharField(max_length=200)
    slug = forms.SlugField(
        max_length=64, required=False, help_text="Leave empty to derive it from the name."
    )
    category = forms.CharField(max_length=64, required=False, help_text="e.g. grocery, fashion")
    region = forms.CharField(max_length=64, required=False, help_text="e.g. eu-west")
    size_band = forms.ChoiceField(choices=[("", "-"), *Merchant.SizeBand.choices], required=False)
    contact_email = forms.EmailField(required=False)
    approve = forms.BooleanField(
        required=False, label="Approve now", help_text="Otherwise the merchant waits as pending."
    )


class MerchantStatusForm(forms.Form):
    status = forms.ChoiceField(choices=Merchant.Status.choices)


class TokenIssueForm(forms.Form):
    label = forms.CharField(max_length=100, required=False, help_text="e.g. the shop's server")
    expires_at = forms.DateTimeField(
        required=False,
        label="Expires at (UTC)",
        help_text="Leave empty for a token that lasts until revoked.",
        widget=forms.DateTimeInput(attrs={"type": "datetime-local"}),
    )


SORT_CHOICES = [
    ("name", "name"),
    ("status", "status"),
    ("category", "category"),
    ("region", "region"),
    ("created", "registered"),
    ("last_seen", "last seen"),
    ("rounds", "rounds joined"),
    ("acceptance", "acceptance rate"),
]


class MerchantFilterForm(forms.Form):
    """The merchant list's search, filters and sort, read from the query string."""

    q = forms.CharField(max_length=200, required=False, label="Search")
    status = forms.ChoiceField(
        choices=[("", "any status"), *Merchant.Status.choices], required=False
    )
    category = forms.CharField(max_length=64, required=False)
    region = forms.CharField(max_length=64, required=False)
    seen = forms.ChoiceField(
        choices=[
            ("", "any time"),
            ("1h", "in the last hour"),
            ("1d", "in the last day"),
            ("7d", "in the last 7 days"),
            ("never", "never"),
        ],
        required=False,
        label="Last seen",
    )
    min_rounds = forms.IntegerField(
        min_value=0, max_value=10**9, required=False, label="Rounds joined at least"
    )
    min_acceptance = forms.IntegerField(
        min_value=0, max_value=100, required=False, label="Acceptance rate at least (%)"
    )
    sort = forms.ChoiceField(
        choices=SORT_CHOICES + [(f"-{key}", f"{label}, descending") for key, label in SORT_CHOICES],
        required=False,
    )

    def __init__(self, *args: Any, categories: list[str], regions: list[str], **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.fields["category"].widget = forms.Select(
            choices=[("", "any category")] + [(c, c) for c in categories]
        )
        self.fields["region"].widget = forms.Select(
            choices=[("", "any region")] + [(r, r) for r in regions]
        )
