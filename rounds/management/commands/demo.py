"""The demo federation: N simulated shops train a purchase-propensity model together.

Everything is real: the ASGI server, the REST API, a Celery worker and beat, and one merchant
client process per shop using the SDK over HTTP. Each shop holds a non-IID slice of the
Instacart sample (its own customers only); the portal never sees a record, only model updates.
"""

from __future__ import annotations

import json
import os
import secrets
import time
from pathlib import Path
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandError, CommandParser

from clients import services as client_services
from clients.models import Merchant
from clients.sdk import codec
from flportal.demo import data as demo_data
from flportal.demo import propensity
from flportal.processes import ProcessGroup, free_port, wait_http
from rounds import artifacts, services
from rounds.models import FederatedModel, Round

TRAINER = "flportal.demo.propensity:make_trainer"


class Command(BaseCommand):
    help = "Run a complete federation of simulated merchants on this machine."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--merchants", type=int, default=5)
        parser.add_argument("--rounds", type=int, default=5)
        parser.add_argument("--port", type=int, default=8000)
        parser.add_argument("--seed", type=int, default=0)
        parser.add_argument(
            "--round-timeout", type=int, default=120, help="seconds each round stays open"
        )
        parser.add_argument("--headless", action="store_true", help="exit when the rounds finish")
        parser.add_argument("--json", action="store_true", help="one JSON object per round")
        parser.add_argument(
            "--pace",
            type=float,
            default=None,
            help="seconds each shop takes per round (default 2 when the portal stays up, so "
            "rounds can be watched; 0 with --headless)",
        )
        parser.add_argument(
            "--secure",
            action="store_true",
            help="secure aggregation: the server only ever sees the sum of the shops' changes",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        shops, rounds = options["merchants"], options["rounds"]
        if not 1 <= shops <= 20 or not 1 <= rounds <= 200:
            raise CommandError("--merchants must be within [1, 20] and --rounds within [1, 200]")
        self.json = options["json"]
        pace = options["pace"] if options["pace"] is not None else 0 if options["headless"] else 2
        if not 0 <= pace <= 60:
            raise CommandError("--pace must be within [0, 60] seconds")
        try:
            _, holdout = demo_data.partition(shops=shops, seed=options["seed"])
        except demo_data.DatasetUnavailable as exc:
            raise CommandError(str(exc)) from None
        call_command("migrate", verbosity=0)
        password = self._operator()
        tokens = self._merchants(shops)
        fl_model = self._model(options["seed"], secure=options["secure"])
        port = free_port(options["port"])
        base = f"http://127.0.0.1:{port}"
        env = dict(os.environ)
        env.update(
            REDIS_URL=settings.REDIS_URL,
            DATABASE_URL=settings.DATABASE_URL,
            SECRET_KEY=settings.SECRET_KEY,
            DJANGO_SETTINGS_MODULE="flportal.settings",
        )
        group = ProcessGroup(env=env, log_dir=Path(settings.VAR_DIR) / "demo-logs")
        try:
            group.web(port)
            group.worker()
            group.beat(Path(settings.VAR_DIR) / "celerybeat-schedule")
            wait_http(f"{base}/accounts/login/", group=group)
            self._info(f"dashboard: {base}/  (log in as operator / {password})")
            for index, (slug, token) in enumerate(tokens):
                group.merchant(
                    slug,
                    url=base,
                    token=token,
                    trainer=TRAINER,
                    options={
                        "shop": index,
                        "shops": shops,
                        "seed": options["seed"],
                        "pace": pace,
                    },
                )
            if options["secure"]:
                self._wait_for_keys([slug for slug, _ in tokens], group)
            self._run_rounds(
                fl_model,
                rounds=rounds,
                shops=shops,
                holdout=holdout,
                timeout=options["round_timeout"],
                group=group,
            )
            if not options["headless"]:
                self._info(
                    f"first {rounds} rounds done; a new round every 10 s from now on, "
                    f"watch them at {base}/ — Ctrl-C stops"
                )
                while True:  # keep the federation going for people watching the portal
                    for _ in range(10):
                        group.check_alive()
                        time.sleep(1)
                    self._run_rounds(
                        fl_model,
                        rounds=1,
                        shops=shops,
                        holdout=holdout,
                        timeout=options["round_timeout"],
                        group=group,
                        header=False,
                    )
        except KeyboardInterrupt:
            self._info("stopping…")
        finally:
            group.stop()

    # --- set-up --------------------------------------------------------------------------
    def _operator(self) -> str:
        password = secrets.token_urlsafe(9)
        user, _ = get_user_model().objects.get_or_create(
            username="operator", defaults={"is_staff": True, "is_superuser": True}
        )
        user.is_staff = user.is_superuser = True
        user.set_password(password)
        user.save()
        return password

    def _merchants(self, shops: int) -> list[tuple[str, str]]:
        tokens = []
        demo = Merchant.objects.filter(slug__startswith="demo-shop-")
        for merchant in demo.filter(status=Merchant.Status.ACTIVE):
            index = int(merchant.slug.rsplit("-", 1)[1]) if merchant.slug[10:].isdigit() else 0
            if index > shops:  # an earlier, larger demo: keep it out of these rounds
                client_services.merchant_set_status(merchant=merchant, status="suspended")
        for index in range(1, shops + 1):
            slug = f"demo-shop-{index}"
            merchant = Merchant.objects.filter(
                slug=slug
            ).first() or client_services.merchant_create(
                name=f"Demo shop {index}",
                slug=slug,
                category="grocery",
                region=["eu-west", "eu-north", "us-east"][index % 3],
            )
            client_services.merchant_set_status(merchant=merchant, status="active")
            for old in merchant.tokens.filter(revoked_at__isnull=True):
                client_services.token_revoke(token=old)
            _, plaintext = client_services.token_issue(merchant=merchant, label="demo")
            tokens.append((slug, plaintext))
        return tokens

    def _wait_for_keys(self, slugs: list[str], group: ProcessGroup) -> None:
        """Secure rounds enrol only merchants with a registered key: wait for every shop's."""
        deadline = time.monotonic() + 60
        keyed = Merchant.objects.filter(slug__in=slugs).exclude(public_key="")
        while keyed.count() < len(slugs):
            group.check_alive()
            if time.monotonic() > deadline:
                raise CommandError("the shops did not register their keys; see var/demo-logs/")
            time.sleep(0.1)

    def _model(self, seed: int, *, secure: bool = False) -> FederatedModel:
        run = FederatedModel.objects.filter(slug__startswith="propensity-demo").count() + 1
        fl_model = services.fl_model_create(
            name=f"Purchase propensity (demo {run})",
            slug=f"propensity-demo-{run}",
            description="Logistic regression on Instacart order lines: is this line a reorder?",
            tensors=propensity.TENSOR_SPECS,
            init="none",
            training_hints={"epochs": 2, "learning_rate": 0.1, "batch_size": 64},
            secure_aggregation={"clip_range": 1.0, "phase_seconds": 30} if secure else None,
        )
        with artifacts.written(propensity.init_weights(seed=seed)) as blob:
            services.version_create(fl_model=fl_model, blob=blob)
        return fl_model

    # --- the rounds ----------------------------------------------------------------------
    def _run_rounds(
        self,
        fl_model: FederatedModel,
        *,
        rounds: int,
        shops: int,
        holdout: demo_data.Shard,
        timeout: int,
        group: ProcessGroup,
        header: bool = True,
    ) -> None:
        created = [
            services.round_create(fl_model=fl_model, min_updates=shops, duration_seconds=timeout)
            for _ in range(rounds)
        ]
        base_metrics = propensity.evaluate(propensity.init_weights(), holdout)
        if header and not self.json:
            self._say(
                f"{'round':>5} {'version':>7} {'merchants':>9} {'loss':>7} {'accuracy':>8} "
                f"{'auc':>6} {'seconds':>7}"
            )
            self._say(
                f"{'init':>5} {1:>7} {'-':>9} {base_metrics['loss']:7.4f} "
                f"{base_metrics['accuracy']:8.4f} {base_metrics['auc']:6.4f} {'-':>7}"
            )
        started = time.monotonic()
        for fl_round in created:
            while True:
                fl_round.refresh_from_db()
                if fl_round.is_terminal:
                    break
                group.check_alive()
                if time.monotonic() - started > timeout * rounds + 60:
                    raise CommandError("the demo is taking far too long; see var/demo-logs/")
                time.sleep(0.05)
            if fl_round.status != Round.Status.COMPLETED:
                raise CommandError(
                    f"round {fl_round.number} {fl_round.status}: {fl_round.failure_reason}"
                )
            self._report(fl_round, holdout, elapsed=time.monotonic() - started)

    def _report(self, fl_round: Round, holdout: demo_data.Shard, *, elapsed: float) -> None:
        version = fl_round.result_version
        with artifacts.local_path(version.weights.name) as path:
            metrics = propensity.evaluate(codec.open_arrays(path), holdout)
        participants = version.aggregation.get("survivors") or fl_round.updates.count()
        if self.json:
            self._say(
                json.dumps(
                    {
                        "round": fl_round.number,
                        "version": version.number,
                        "participants": participants,
                        "metrics": {k: round(v, 6) for k, v in metrics.items()},
                    }
                )
            )
        else:
            self._say(
                f"{fl_round.number:>5} {version.number:>7} {participants:>9} "
                f"{metrics['loss']:7.4f} {metrics['accuracy']:8.4f} {metrics['auc']:6.4f} "
                f"{elapsed:7.1f}"
            )

    def _info(self, line: str) -> None:
        """Progress for people: on stderr in --json mode, so stdout stays one JSON per line."""
        stream = self.stderr if self.json else self.stdout
        stream.write(line)
        stream.flush()

    def _say(self, line: str) -> None:
        self.stdout.write(line)
        self.stdout.flush()
