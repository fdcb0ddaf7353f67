"""Round close → new version published, against in-memory FedAvg of the same updates.

    python -m benchmarks.round_close [--merchants 100] [--params 1000000] [--repeat 3] [--json]

Builds a throw-away portal (SQLite and media in a temporary folder, the configured or an
embedded Redis), stores one update per merchant through the real service, then times:
  * reference: ``fedavg`` over the same updates held in memory (numpy arrays);
  * in-process: ``services.round_aggregate`` (what the Celery task runs): memory-maps the stored
    files (warm page cache), aggregates, writes and validates the version, completes the round;
  * worker: the same through a real Celery worker process, from ``delay()`` until the round is
    completed in the database (includes broker latency and 5 ms polling).
Target (SPEC §10): in-process and worker ≤ 3x the reference.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--merchants", type=int, default=100)
    parser.add_argument("--params", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--no-worker", action="store_true")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)

    workdir = Path(tempfile.mkdtemp(prefix="flportal-bench-"))
    os.environ.update(
        FLPORTAL_VAR_DIR=str(workdir), DEBUG="1", DJANGO_SETTINGS_MODULE="flportal.settings"
    )
    os.environ.pop("DATABASE_URL", None)
    os.environ.pop("MEDIA_ROOT", None)
    import django

    django.setup()
    from django.conf import settings
    from django.core.management import call_command

    call_command("migrate", verbosity=0)
    rows = run(args, settings)
    for row in rows:
        if args.json:
            print(json.dumps(row))
        else:
            print(
                f"{row['case']:<12} {row['seconds']:8.3f} s  {row['ratio_to_reference']:5.2f}x "
                f"in-memory FedAvg ({row['reference_seconds']:.3f} s)  target <= 3x  "
                f"{'met' if row['met'] else 'NOT met'}"
            )
    return 0


def run(args: argparse.Namespace, settings) -> list[dict]:
    import numpy as np

    from clients import services as client_services
    from flportal.processes import ProcessGroup
    from rounds import artifacts, services, tasks
    from rounds.aggregation import fedavg
    from rounds.models import Round

    tensors = [{"name": "weight", "shape": [args.params], "dtype": "float32"}]
    merchants = [
        client_services.merchant_create(name=f"Shop {k}", status="active")
        for k in range(args.merchants)
    ]
    rng = np.random.default_rng(0)
    updates = [
        {"weight": rng.standard_normal(args.params, dtype=np.float32)}
        for _ in range(args.merchants)
    ]
    weights = [10 + k for k in range(args.merchants)]

    def closed_round(tag: str) -> Round:
        """A round whose last upload closed it, with its aggregation not yet enqueued."""
        fl_model = services.fl_model_create(name=f"bench-{tag}", tensors=tensors, init="zeros")
        fl_round = services.round_create(fl_model=fl_model, min_updates=args.merchants)
        enqueue, tasks.round_aggregate.delay = tasks.round_aggregate.delay, lambda *a: None
        try:
            for merchant, update, n in zip(merchants, updates, weights, strict=True):
                with artifacts.written(update) as blob:
                    services.update_submit(
                        fl_round=fl_round, merchant=merchant, blob=blob, num_examples=n, metrics={}
                    )
        finally:
            tasks.round_aggregate.delay = enqueue
        return fl_round

    def best_of(fn) -> float:
        times = []
        for _ in range(args.repeat):
            started = time.perf_counter()
            fn()
            times.append(time.perf_counter() - started)
        return statistics.median(times)

    reference = best_of(lambda: fedavg(updates, weights))
    print(f"reference in-memory FedAvg: {reference:.3f} s", file=sys.stderr)
    rounds = [closed_round(f"p{i}") for i in range(args.repeat)]
    seconds = []
    for fl_round in rounds:
        started = time.perf_counter()
        services.round_aggregate(round_id=fl_round.pk)
        seconds.append(time.perf_counter() - started)
    rows = [_row("in-process", statistics.median(seconds), reference, args)]

    if not args.no_worker:
        group = ProcessGroup(env=dict(os.environ), log_dir=Path(settings.VAR_DIR) / "logs")
        group.worker(concurrency=1)
        try:
            time.sleep(3)  # let the worker connect before timing
            rounds = [closed_round(f"w{i}") for i in range(args.repeat)]
            seconds = []
            for fl_round in rounds:
                started = time.perf_counter()
                tasks.round_aggregate.delay(fl_round.pk)
                while Round.objects.filter(pk=fl_round.pk, status="aggregating").exists():
                    group.check_alive()
                    time.sleep(0.005)
                seconds.append(time.perf_counter() - started)
            rows.append(_row("celery", statistics.median(seconds), reference, args))
        finally:
            group.stop()
    return rows


def _row(case: str, seconds: float, reference: float, args: argparse.Namespace) -> dict:
    ratio = seconds / reference
    return {
        "case": case,
        "merchants": args.merchants,
        "params": args.params,
        "seconds": round(seconds, 4),
        "reference_seconds": round(reference, 4),
        "ratio_to_reference": round(ratio, 3),
        "target": 3.0,
        "met": ratio <= 3.0,
    }


if __name__ == "__main__":
    raise SystemExit(main())
