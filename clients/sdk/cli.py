"""``flportal-client``: run a merchant against a flportal server.

    flportal-client run --url http://portal:8000 --token flp_... \
        --trainer mypackage.training:make_trainer --option data=/srv/shop.parquet

The trainer factory is called once with the ``--option`` values (as strings) and returns a
:class:`~clients.sdk.training.Trainer`. The runner waits for rounds it is invited to, downloads
the global weights, trains locally, uploads the update, and repeats.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import httpx

from clients.sdk.client import ApiError, FlportalClient, RoundInfo
from clients.sdk.keys import KeyFileError, load_or_create
from clients.sdk.privacy import clip_to_round, with_local_dp
from clients.sdk.secagg import public_key_of
from clients.sdk.secure import Dropped, participate_secure, skip_reason
from clients.sdk.training import Trainer

logger = logging.getLogger("flportal.client")

# Errors that mean "this round moved on without us": skip the round, keep running.
ROUND_GONE_CODES = frozenset({"round_not_open", "round_not_found", "not_invited"})


def load_trainer(spec: str, options: dict[str, str]) -> Trainer:
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise SystemExit(f"--trainer must look like 'package.module:factory', got {spec!r}")
    factory: Callable[..., Trainer] = getattr(importlib.import_module(module_name), attr)
    return factory(**options)


def participate(client: FlportalClient, trainer: Trainer, fl_round: RoundInfo) -> dict[str, Any]:
    """Download, train, upload for one round; returns the server's view of the update."""
    weights = client.download_weights(fl_round)
    hints = {**fl_round.training_hints, "round": fl_round.number}
    result = clip_to_round(trainer(weights, hints), weights, hints)  # client-side DP clipping
    return client.upload_update(
        fl_round.id, result.weights, num_examples=result.num_examples, metrics=result.metrics
    )


def run_merchant(
    client: FlportalClient,
    trainer: Trainer,
    *,
    poll_interval: float = 0.5,
    max_rounds: int | None = None,
    stop: threading.Event | None = None,
    on_update: Callable[[RoundInfo, dict[str, Any]], None] | None = None,
    identity: bytes | None = None,
) -> int:
    """Take part in rounds until ``max_rounds`` updates were sent or ``stop`` is set. With an
    ``identity`` (X25519 private key) the merchant registers its public key and takes part in
    secure-aggregation rounds; without one it skips them."""
    stop = stop or threading.Event()
    done = 0
    handled: set[int] = set()  # secure rounds finished (or given up) in this process
    if identity is not None:
        client.register_public_key(public_key_of(identity))
    while not stop.is_set() and (max_rounds is None or done < max_rounds):
        try:
            pending = [r for r in client.rounds() if r.my_update is None and r.id not in handled]
        except ApiError as exc:
            if exc.status in (401, 403):
                raise
            logger.warning("listing rounds failed: %s", exc)
            stop.wait(1.0)
            continue
        for fl_round in pending:
            if stop.is_set():
                break
            if fl_round.secure_aggregation:
                handled.add(fl_round.id)
                if identity is None:
                    logger.warning("round %s uses secure aggregation: no key file", fl_round.id)
                    continue
                try:
                    update = participate_secure(
                        client, trainer, fl_round, identity=identity, stop=stop
                    )
                except (ApiError, Dropped) as exc:
                    reason = skip_reason(exc)
                    if reason is None:
                        raise
                    logger.info("secure round %s: dropped out (%s)", fl_round.id, reason)
                    continue
                done += 1
                if on_update:
                    on_update(fl_round, update)
                continue
            try:
                update = participate(client, trainer, fl_round)
            except ApiError as exc:
                if exc.code in ROUND_GONE_CODES:
                    logger.info("round %s moved on: %s", fl_round.id, exc.code)
                    continue
                raise
            done += 1
            logger.info("round %s: update %s", fl_round.id, update.get("status"))
            if on_update:
                on_update(fl_round, update)
        evaluated = evaluate_pending(client, trainer) if not stop.is_set() else 0
        if not pending and not evaluated:
            stop.wait(poll_interval)
    return done


def evaluate_pending(client: FlportalClient, trainer: Trainer) -> int:
    """Federated evaluation: score each new version this merchant helped train on its own
    held-out data and report the metrics (only if the trainer has an ``evaluate``)."""
    evaluate = getattr(trainer, "evaluate", None)
    if evaluate is None:
        return 0
    count = 0
    for pending in client.pending_evaluations():
        result = evaluate(client.fetch_weights(pending.weights_url))
        try:
            client.submit_evaluation(
                pending.model,
                pending.version,
                num_examples=result.num_examples,
                metrics=result.metrics,
            )
        except ApiError as exc:
            if exc.code not in {"evaluation_already_submitted", "not_a_contributor"}:
                raise
        count += 1
    return count


def default_key_file(token: str) -> str:
    parts = token.split("_")
    prefix = "".join(c for c in parts[1] if c.isalnum()) if len(parts) >= 3 else ""
    return os.path.join("~", ".flportal", "keys", f"{prefix or 'default'}.key")


def _parse_options(pairs: Sequence[str]) -> dict[str, str]:
    options: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise SystemExit(f"--option must look like key=value, got {pair!r}")
        options[key] = value
    return options


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="flportal-client", description=__doc__.split("\n")[0])
    parser.add_argument("--url", default=os.environ.get("FLPORTAL_URL", "http://127.0.0.1:8000"))
    parser.add_argument(
        "--token",
        default=os.environ.get("FLPORTAL_TOKEN"),
        help="merchant API token (or FLPORTAL_TOKEN)",
    )
    parser.add_argument("-v", "--verbose", action="store_true")
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="take part in rounds until stopped")
    run.add_argument("--trainer", required=True, help="package.module:factory")
    run.add_argument("--option", action="append", default=[], help="key=value for the factory")
    run.add_argument("--max-rounds", type=int, default=None)
    run.add_argument("--poll", type=float, default=0.5, help="seconds between polls when idle")
    run.add_argument("--json", action="store_true", help="print one JSON line per update")
    run.add_argument(
        "--local-dp-clip",
        type=float,
        default=None,
        help="local DP: clip each update's change to this L2 norm",
    )
    run.add_argument(
        "--local-dp-noise",
        type=float,
        default=0.0,
        help="local DP: Gaussian noise multiplier (std = multiplier x clip)",
    )
    run.add_argument(
        "--key-file",
        default=os.environ.get("FLPORTAL_KEY_FILE"),
        help="X25519 identity for secure aggregation, created with mode 0600 if missing "
        "(default ~/.flportal/keys/<token prefix>.key)",
    )
    commands.add_parser("rounds", help="list the open rounds this merchant is invited to")
    status = commands.add_parser("status", help="show my update for a round")
    status.add_argument("round_id", type=int)
    args = parser.parse_args(argv)

    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
    )
    if not args.token:
        parser.error("a token is required: --token or FLPORTAL_TOKEN")

    with FlportalClient(args.url, args.token) as client:
        try:
            if args.command == "rounds":
                for fl_round in client.rounds():
                    print(
                        json.dumps(
                            {
                                "id": fl_round.id,
                                "model": fl_round.model,
                                "number": fl_round.number,
                                "status": fl_round.status,
                                "submitted": fl_round.my_update is not None,
                            }
                        )
                    )
                return 0
            if args.command == "status":
                print(json.dumps(client.update_status(args.round_id)))
                return 0
            trainer = load_trainer(args.trainer, _parse_options(args.option))
            if args.local_dp_clip is not None:
                trainer = with_local_dp(
                    trainer, clip_norm=args.local_dp_clip, noise_multiplier=args.local_dp_noise
                )
            try:
                identity, _ = load_or_create(args.key_file or default_key_file(args.token))
            except KeyFileError as exc:
                print(f"flportal-client: {exc}", file=sys.stderr)
                return 2
            stop = threading.Event()
            for sig in (signal.SIGINT, signal.SIGTERM):
                signal.signal(sig, lambda *_: stop.set())

            def report(fl_round: RoundInfo, update: dict[str, Any]) -> None:
                if args.json:
                    print(json.dumps({"round": fl_round.id, "update": update}), flush=True)

            started = time.monotonic()
            count = run_merchant(
                client,
                trainer,
                poll_interval=args.poll,
                max_rounds=args.max_rounds,
                stop=stop,
                on_update=report,
                identity=identity,
            )
            logger.info("sent %d updates in %.1fs", count, time.monotonic() - started)
            return 0
        except ApiError as exc:
            print(f"flportal-client: {exc}", file=sys.stderr)
            return 2
        except httpx.TransportError as exc:
            print(f"flportal-client: cannot reach {args.url}: {exc}", file=sys.stderr)
            return 3


if __name__ == "__main__":
    raise SystemExit(main())
