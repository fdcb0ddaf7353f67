"""The portal's two roles. Operators act; viewers only read. Merchants never reach the portal.

A staff user is an *operator* when it is a superuser or in the ``operators`` group, a *viewer*
when it is in the ``viewers`` group; a staff user in neither group has no portal role. Every page
is wrapped in :func:`viewer_required` (read) or :func:`operator_required` (act), and the operator
API uses :func:`is_operator` through ``flportal.api.IsOperator``.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import wraps
from typing import Any

from django.contrib.auth.views import redirect_to_login
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponse

OPERATORS_GROUP = "operators"
VIEWERS_GROUP = "viewers"

OPERATOR = "operator"
VIEWER = "viewer"


def role_of(user: Any) -> str | None:
    """``"operator"``, ``"viewer"`` or ``None`` (anonymous, inactive, not staff, no group)."""
    if not getattr(user, "is_authenticated", False) or not user.is_active or not user.is_staff:
        return None
    if user.is_superuser:
        return OPERATOR
    cached = getattr(user, "_flportal_role", False)
    if cached is not False:
        return cached
    names = set(user.groups.values_list("name", flat=True))
    role = OPERATOR if OPERATORS_GROUP in names else VIEWER if VIEWERS_GROUP in names else None
    user._flportal_role = role
    return role


def is_operator(user: Any) -> bool:
    return role_of(user) == OPERATOR


def can_view(user: Any) -> bool:
    """Operators and viewers may read every portal page."""
    return role_of(user) is not None


View = Callable[..., HttpResponse]


def _require(check: Callable[[Any], bool], message: str) -> Callable[[View], View]:
    def decorator(view: View) -> View:
        @wraps(view)
        def wrapper(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
            if not request.user.is_authenticated:
                return redirect_to_login(request.get_full_path())
            if not check(request.user):
                raise PermissionDenied(message)
            return view(request, *args, **kwargs)

        return wrapper

    return decorator


viewer_required = _require(can_view, "The portal is for operators and viewers.")
operator_required = _require(is_operator, "Only operators can do this; viewers have read access.")
