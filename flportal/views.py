"""Project-wide error pages: JSON under /api/, HTML elsewhere."""

from __future__ import annotations

from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import render
from django.views import defaults

from flportal.errors import error_body, json_404, json_500
from flportal.roles import OPERATOR, VIEWER, role_of


def not_found(request: HttpRequest, exception: Exception) -> HttpResponse:
    if request.path.startswith("/api/"):
        return json_404(request, exception)
    return defaults.page_not_found(request, exception)


def permission_denied(request: HttpRequest, exception: Exception) -> HttpResponse:
    """403: say which role the user has and which one the page or action needs."""
    detail = str(exception) or "You may not do this."
    if request.path.startswith("/api/"):
        return JsonResponse(error_body("permission_denied", detail), status=403)
    context = {
        "detail": detail,
        "role": role_of(request.user),
        "OPERATOR": OPERATOR,
        "VIEWER": VIEWER,
    }
    return render(request, "403.html", context, status=403)


def server_error(request: HttpRequest) -> HttpResponse:
    if request.path.startswith("/api/"):
        return json_500(request)
    return defaults.server_error(request)
