"""Portal login, logout, roles in the header, the 403 page and ``manage.py portal_user``."""

from __future__ import annotations

import pytest
from django.contrib.auth import get_user_model
from django.core.management import CommandError, call_command
from django.test import Client

from flportal.roles import OPERATOR, VIEWER, role_of
from tests.factories import OperatorFactory, ViewerFactory

pytestmark = pytest.mark.django_db

LOGIN = "/accounts/login/"
PASSWORD = "correct horse battery staple"


def _with_password(user):
    user.set_password(PASSWORD)
    user.save()
    return user


def _csrf_client() -> Client:
    client = Client(enforce_csrf_checks=True)
    client.get(LOGIN)
    return client


def _login(client: Client, username: str, password: str = PASSWORD, next_url: str = ""):
    return client.post(
        LOGIN,
        {
            "username": username,
            "password": password,
            "next": next_url,
            "csrfmiddlewaretoken": client.cookies["csrftoken"].value,
        },
    )


# --- login ------------------------------------------------------------------------------------


def test_login_page_is_a_form_with_csrf_and_labelled_fields():
    response = Client().get(LOGIN)
    assert response.status_code == 200
    html = response.content.decode()
    assert 'name="csrfmiddlewaretoken"' in html
    assert '<label for="id_username">Username</label>' in html
    assert '<label for="id_password">Password</label>' in html
    assert 'id="login"' in html


@pytest.mark.parametrize("factory", [OperatorFactory, ViewerFactory])
def test_an_operator_or_viewer_logs_in_and_lands_on_the_next_page(factory):
    user = _with_password(factory())
    client = _csrf_client()
    response = _login(client, user.username, next_url="/merchants/")
    assert response.status_code == 302
    assert response["Location"] == "/merchants/"
    assert client.get("/merchants/").status_code == 200


def test_a_wrong_password_is_refused_with_a_message():
    user = _with_password(OperatorFactory())
    client = _csrf_client()
    response = _login(client, user.username, password="wrong")
    assert response.status_code == 200
    assert "Please enter a correct username and password" in response.content.decode()
    assert client.get("/merchants/").status_code == 302


def test_a_staff_user_without_a_portal_role_cannot_log_in():
    user = _with_password(OperatorFactory(role="none"))
    client = _csrf_client()
    response = _login(client, user.username)
    assert response.status_code == 200
    assert "This account has no portal role" in response.content.decode()
    assert "_auth_user_id" not in client.session


def test_a_non_staff_user_in_the_operators_group_cannot_log_in():
    user = _with_password(OperatorFactory(is_staff=False))
    response = _login(_csrf_client(), user.username)
    assert "This account has no portal role" in response.content.decode()


def test_login_without_the_csrf_token_is_forbidden():
    user = _with_password(OperatorFactory())
    client = Client(enforce_csrf_checks=True)
    response = client.post(LOGIN, {"username": user.username, "password": PASSWORD})
    assert response.status_code == 403
    assert "_auth_user_id" not in client.session


# --- logout, anonymous ------------------------------------------------------------------------


def test_logout_is_a_post_that_ends_the_session(operator_client):
    assert operator_client.get("/accounts/logout/").status_code == 405
    response = operator_client.post("/accounts/logout/")
    assert response.status_code == 302
    assert response["Location"] == LOGIN
    assert operator_client.get("/merchants/").status_code == 302


@pytest.mark.parametrize("path", ["/merchants/", "/merchants/new/", "/audit/", "/rounds/"])
def test_anonymous_visitors_are_sent_to_login(client, path):
    response = client.get(path)
    assert response.status_code == 302
    assert response["Location"] == f"{LOGIN}?next={path}"


def test_a_bearer_token_does_not_open_the_portal(merchant_client):
    response = merchant_client.get("/merchants/")
    assert response.status_code == 302
    assert response["Location"].startswith(LOGIN)


# --- header and 403 ---------------------------------------------------------------------------


def test_the_header_shows_the_user_and_the_role_and_the_portal_links(operator_client, operator):
    html = operator_client.get("/merchants/").content.decode()
    assert f'<span id="whoami">{operator.username}</span>' in html
    assert 'id="role">operator</span>' in html
    for href in ['href="/merchants/"', 'href="/rounds/"', 'href="/audit/"']:
        assert href in html
    assert 'id="logout"' in html


def test_a_viewer_sees_the_viewer_role(client):
    client.force_login(ViewerFactory())
    assert 'id="role">viewer</span>' in client.get("/audit/").content.decode()


def test_the_403_page_explains_the_viewer_role(client):
    viewer = ViewerFactory()
    client.force_login(viewer)
    response = client.get("/merchants/new/")
    assert response.status_code == 403
    html = response.content.decode()
    assert "Only operators can do this" in html
    assert "viewer</span> role" in html
    assert "you can read every page" in html


def test_the_403_page_tells_a_user_without_a_role_how_to_get_one(client):
    user = OperatorFactory(role="none")
    client.force_login(user)
    response = client.get("/audit/")
    assert response.status_code == 403
    html = response.content.decode()
    assert "an account without a portal role" in html
    assert f"manage.py portal_user {user.username} --role viewer" in html


# --- manage.py portal_user --------------------------------------------------------------------


def _run(*args: str) -> str:
    from io import StringIO

    out = StringIO()
    call_command("portal_user", *args, stdout=out)
    return out.getvalue()


def test_portal_user_creates_a_viewer_who_can_log_in_and_only_read():
    assert "created carol as viewer" in _run("carol", "--role", "viewer", "--password", PASSWORD)
    user = get_user_model().objects.get(username="carol")
    assert user.is_staff and not user.is_superuser
    assert role_of(user) == VIEWER
    client = _csrf_client()
    assert _login(client, "carol").status_code == 302
    assert client.get("/merchants/").status_code == 200
    assert client.get("/merchants/new/").status_code == 403


def test_portal_user_changes_the_role_and_keeps_the_password():
    _run("dave", "--role", "viewer", "--password", PASSWORD)
    assert "updated dave as operator" in _run("dave", "--role", "operator")
    user = get_user_model().objects.get(username="dave")
    assert role_of(user) == OPERATOR
    assert list(user.groups.values_list("name", flat=True)) == ["operators"]
    assert user.check_password(PASSWORD)


def test_portal_user_prompts_for_a_password(monkeypatch):
    answers = iter([PASSWORD, PASSWORD])
    monkeypatch.setattr("getpass.getpass", lambda prompt="": next(answers))
    _run("erin", "--role", "operator")
    assert get_user_model().objects.get(username="erin").check_password(PASSWORD)


def test_portal_user_refuses_mismatched_prompts_and_creates_nobody(monkeypatch):
    answers = iter([PASSWORD, "something else"])
    monkeypatch.setattr("getpass.getpass", lambda prompt="": next(answers))
    with pytest.raises(CommandError, match="do not match"):
        _run("frank", "--role", "operator")
    assert not get_user_model().objects.filter(username="frank").exists()


def test_portal_user_without_input_needs_a_password():
    with pytest.raises(CommandError, match="needs a password"):
        _run("gina", "--role", "viewer", "--no-input")
    assert not get_user_model().objects.filter(username="gina").exists()


def test_portal_user_rejects_an_unknown_role():
    with pytest.raises(CommandError):
        _run("hank", "--role", "admin", "--password", PASSWORD)
