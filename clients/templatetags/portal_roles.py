"""``{{ user|portal_role }}``: the portal role of a user, for the header and for showing actions."""

from __future__ import annotations

from typing import Any

from django import template

from flportal.roles import role_of

register = template.Library()


@register.filter
def portal_role(user: Any) -> str:
    """``"operator"``, ``"viewer"`` or ``""`` (no portal role)."""
    return role_of(user) or ""
