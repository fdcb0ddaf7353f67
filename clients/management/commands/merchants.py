"""Manage merchants and their tokens from the command line.

manage.py merchants create "Acme Shop" --category grocery --activate
manage.py merchants token acme-shop --label pos-1      # prints the token once
manage.py merchants revoke <token-id>
manage.py merchants list
"""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from clients import services
from clients.models import ApiToken, Merchant
from flportal.errors import DomainError


class Command(BaseCommand):
    help = "Create merchants, change their status, issue and revoke API tokens."

    def add_arguments(self, parser: CommandParser) -> None:
        sub = parser.add_subparsers(dest="action", required=True)
        create = sub.add_parser("create")
        create.add_argument("name")
        create.add_argument("--slug", default="")
        create.add_argument("--category", default="")
        create.add_argument("--region", default="")
        create.add_argument("--size-band", default="")
        create.add_argument("--activate", action="store_true")
        status = sub.add_parser("status")
        status.add_argument("slug")
        status.add_argument("status", choices=Merchant.Status.values)
        token = sub.add_parser("token")
        token.add_argument("slug")
        token.add_argument("--label", default="")
        revoke = sub.add_parser("revoke")
        revoke.add_argument("token_id", type=int)
        sub.add_parser("list")

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            getattr(self, f"_{options['action']}")(options)
        except DomainError as exc:
            raise CommandError(f"{exc.code}: {exc.detail}") from None

    def _create(self, options: dict[str, Any]) -> None:
        merchant = services.merchant_create(
            name=options["name"],
            slug=options["slug"],
            category=options["category"],
            region=options["region"],
            size_band=options["size_band"],
            status=Merchant.Status.ACTIVE if options["activate"] else Merchant.Status.PENDING,
        )
        self.stdout.write(f"created {merchant.slug} ({merchant.status})")

    def _status(self, options: dict[str, Any]) -> None:
        merchant = services.merchant_set_status(
            merchant=services.merchant_get(slug=options["slug"]), status=options["status"]
        )
        self.stdout.write(f"{merchant.slug} is {merchant.status}")

    def _token(self, options: dict[str, Any]) -> None:
        token, plaintext = services.token_issue(
            merchant=services.merchant_get(slug=options["slug"]), label=options["label"]
        )
        self.stderr.write(f"token {token.pk} for {token.merchant.slug}; shown once, store it now:")
        self.stdout.write(plaintext)

    def _revoke(self, options: dict[str, Any]) -> None:
        token = ApiToken.objects.filter(pk=options["token_id"]).first()
        if token is None:
            raise CommandError(f"no token {options['token_id']}")
        services.token_revoke(token=token)
        self.stdout.write(f"token {token.pk} ({token.prefix}) revoked")

    def _list(self, options: dict[str, Any]) -> None:
        for merchant in Merchant.objects.prefetch_related("tokens"):
            live = sum(1 for t in merchant.tokens.all() if t.is_usable())
            self.stdout.write(f"{merchant.slug}\t{merchant.status}\t{live} usable tokens")
