"""Create or update a portal user and give it exactly one role.

manage.py portal_user alice --role operator               # prompts for a new user's password
manage.py portal_user bob --role viewer --password "$PW"  # non-interactive
manage.py portal_user bob --role operator                 # promote; password unchanged

Operators act (register merchants, issue tokens, schedule rounds); viewers read every page.
"""

from __future__ import annotations

import getpass
from typing import Any

from django.contrib.auth import get_user_model, password_validation
from django.contrib.auth.models import Group
from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import transaction

from flportal.roles import OPERATOR, OPERATORS_GROUP, VIEWER, VIEWERS_GROUP

GROUPS = {OPERATOR: OPERATORS_GROUP, VIEWER: VIEWERS_GROUP}


class Command(BaseCommand):
    help = "Create or update a portal user (staff) with the operator or viewer role."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("username")
        parser.add_argument("--role", choices=sorted(GROUPS), required=True)
        parser.add_argument("--email", default=None, help="set the user's e-mail address")
        parser.add_argument(
            "--password",
            default=None,
            help="the password (prompted when omitted for a new user, or with --set-password)",
        )
        parser.add_argument("--set-password", action="store_true", help="prompt for a new password")
        parser.add_argument(
            "--no-input", action="store_false", dest="interactive", help="never prompt"
        )

    def handle(self, *args: Any, **options: Any) -> None:
        username = options["username"].strip()
        if not username:
            raise CommandError("The username must not be empty.")
        user_model = get_user_model()
        user = user_model.objects.filter(**{user_model.USERNAME_FIELD: username}).first()
        created = user is None
        if created:
            user = user_model(**{user_model.USERNAME_FIELD: username})
        password = options["password"]
        if password is None and (created or options["set_password"]):
            password = self._prompt(options["interactive"])
        if password is not None:
            try:
                password_validation.validate_password(password, user)
            except ValidationError as exc:
                raise CommandError(" ".join(exc.messages)) from None
            user.set_password(password)
        if options["email"] is not None:
            user.email = options["email"]
        user.is_staff = True
        user.is_active = True
        role = options["role"]
        with transaction.atomic():
            user.save()
            others = [name for key, name in GROUPS.items() if key != role]
            user.groups.remove(*Group.objects.filter(name__in=others))
            user.groups.add(Group.objects.get_or_create(name=GROUPS[role])[0])
        verb = "created" if created else "updated"
        note = " (superuser: acts as operator whatever the role)" if user.is_superuser else ""
        self.stdout.write(f"{verb} {username} as {role}{note}")

    def _prompt(self, interactive: bool) -> str:
        if not interactive:
            raise CommandError("A new user needs a password: pass --password (or drop --no-input).")
        first = getpass.getpass("Password: ")
        if first != getpass.getpass("Password (again): "):
            raise CommandError("The passwords do not match.")
        if not first:
            raise CommandError("The password must not be empty.")
        return first
