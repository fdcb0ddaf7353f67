"""Federated as good as pooled? Model quality on real e-commerce data, through the real portal.

    python -m benchmarks.quality [--task reorder|recommend|intent ...] [--rounds N] [--json]

For each task (a model template on its data set, split into non-IID shops), side by side:
  * centralised: the same model trained on all shops' data pooled, same epoch budget;
  * solo: every shop training alone on its own data, same budget (mean over shops);
  * federation with FedAvg and with FedProx, run through the real stack — the ASGI server, a
    Celery worker and beat, and one SDK client per shop over HTTP (threads of this process) —
    with federated evaluation: every shop scores each new version on its own held-out data.
Reported: the test metric of each (on the union of the shops' held-out sets), each shop's
federated vs solo metric, rounds to reach the target, and bytes each shop sent.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

DP_EPSILON, DP_DELTA = 8.0, 1e-5


@dataclass(frozen=True)
class Task:
    name: str
    template: str
    metric: str  # "auc" (higher is better) or "rmse" (lower is better)
    load: Callable[[int], Any]  # seed -> datasets Split
    dims: Callable[[Any], dict[str, int]]
    rounds: int
    hints: dict[str, Any]
    target: str
    dp_clip: float = 0.5  # L2 bound on one shop's change per round under DP

    @property
    def higher_is_better(self) -> bool:
        return self.metric != "rmse"


def _tasks() -> dict[str, Task]:
    from flportal.datasets import clothing, instacart, movielens

    return {
        "reorder": Task(
            "reorder",
            "purchase_propensity",
            "auc",
            lambda seed: instacart.split(shops=10, seed=seed),
            lambda s: {"n_features": s.meta["n_features"]},
            20,
            {"epochs": 1, "learning_rate": 0.1, "batch_size": 64},
            "federated AUC within 0.01 of centralised; every shop above solo; "
            "with DP (epsilon <= 8) within 0.03",
            dp_clip=0.3,
        ),
        "recommend": Task(
            "recommend",
            "recommender",
            "rmse",
            lambda seed: movielens.split(shops=10, seed=seed, holdout="random"),
            lambda s: {"n_items": s.meta["n_items"], "k": 16},
            20,
            {"epochs": 1, "learning_rate": 0.02, "batch_size": 32},
            "federated RMSE <= 0.945",
            dp_clip=1.0,
        ),
        "intent": Task(
            "intent",
            "purchase_intent",
            "auc",
            lambda seed: clothing.split(seed=seed),
            lambda s: {
                "n_numeric": s.meta["n_numeric"],
                "n_categorical": s.meta["n_categorical"],
                "buckets": s.meta["buckets"],
                "embedding_dim": 8,
            },
            20,
            {"epochs": 1, "learning_rate": 0.05, "batch_size": 64},
            "federated AUC within 0.01 of centralised",
        ),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--task", action="append", choices=["reorder", "recommend", "intent"])
    parser.add_argument("--rounds", type=int, default=None, help="override each task's rounds")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--strategy", action="append", choices=["fedavg", "fedprox", "fedavg-dp"])
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)

    workdir = Path(tempfile.mkdtemp(prefix="flportal-quality-"))
    os.environ.update(
        FLPORTAL_VAR_DIR=str(workdir),
        DEBUG="1",
        DJANGO_SETTINGS_MODULE="flportal.settings",
        ROUNDS_TICK_SECONDS="0.5",
    )
    for name in ("DATABASE_URL", "MEDIA_ROOT"):
        os.environ.pop(name, None)
    import django

    django.setup()
    from django.core.management import call_command

    from flportal.processes import ProcessGroup, free_port, wait_http

    call_command("migrate", verbosity=0)
    import logging

    logging.getLogger("httpx").setLevel(logging.WARNING)
    port = free_port()
    group = ProcessGroup(env=dict(os.environ), log_dir=workdir / "logs")
    tasks = _tasks()
    rows: list[dict[str, Any]] = []
    try:
        group.web(port)
        group.worker(concurrency=1)
        group.beat(workdir / "beat-schedule")
        url = f"http://127.0.0.1:{port}"
        wait_http(f"{url}/accounts/login/", group=group)
        for name in args.task or list(tasks):
            task = tasks[name]
            rounds = args.rounds or task.rounds
            row = run_task(
                task,
                url=url,
                rounds=rounds,
                seed=args.seed,
                strategies=args.strategy or ["fedavg", "fedprox", "fedavg-dp"],
                group=group,
            )
            rows.append(row)
            _print(row, as_json=args.json)
    finally:
        group.stop()
    return 0


def run_task(
    task: Task, *, url: str, rounds: int, seed: int, strategies: list[str], group: Any
) -> dict[str, Any]:
    from clients.sdk import models as sdk_models

    split = task.load(seed)
    dims = task.dims(split)
    module = sdk_models.TEMPLATES[_template_module(task.template)]
    budget = rounds * int(task.hints.get("epochs", 1))
    _say(f"[{task.name}] {len(split.shops)} shops, skew {split.skew}")
    central = centralised(module, split, dims=dims, epochs=budget, hints=task.hints, seed=seed)
    solo = {
        shop.name: solo_run(module, shop, dims=dims, epochs=budget, hints=task.hints, seed=seed)
        for shop in split.shops
    }
    _say(
        f"[{task.name}] centralised {task.metric} {central:.4f}; solo mean "
        f"{np.mean([s['test'] for s in solo.values()]):.4f}"
    )
    federated = {
        strategy: federate(
            task,
            split,
            dims=dims,
            rounds=rounds,
            strategy=strategy,
            url=url,
            seed=seed,
            central=central,
            group=group,
        )
        for strategy in strategies
    }
    return {
        "task": task.name,
        "template": task.template,
        "metric": task.metric,
        "shops": len(split.shops),
        "skew": split.skew,
        "rounds": rounds,
        "centralised": central,
        "solo": solo,
        "federated": federated,
        "target": task.target,
    }


def _template_module(template: str) -> str:
    from rounds.templates import TEMPLATES

    return TEMPLATES[template].module


def centralised(
    module: Any, split: Any, *, dims: dict[str, int], epochs: int, hints: dict[str, Any], seed: int
) -> float:
    from flportal.datasets import pooled

    train, test = pooled(split, test="shops")  # the same held-out rows the shops score
    weights = module.init(seed=seed, **dims)
    weights, _, local = module.train(
        weights,
        train,
        epochs=epochs,
        learning_rate=hints["learning_rate"],
        batch_size=hints["batch_size"],
        seed=seed,
    )
    return float(module.evaluate(weights, test, local=local)[_metric_key(module)])


def solo_run(
    module: Any, shop: Any, *, dims: dict[str, int], epochs: int, hints: dict[str, Any], seed: int
) -> dict[str, float]:
    weights = module.init(seed=seed, **dims)
    weights, _, local = module.train(
        weights,
        shop.train,
        epochs=epochs,
        learning_rate=hints["learning_rate"],
        batch_size=hints["batch_size"],
        seed=seed,
    )
    return {
        "test": float(module.evaluate(weights, shop.test, local=local)[_metric_key(module)]),
        "n_test": len(shop.test),
    }


def _metric_key(module: Any) -> str:
    return "rmse" if module.__name__.endswith(".mf") else "auc"


def federate(
    task: Task,
    split: Any,
    *,
    dims: dict[str, int],
    rounds: int,
    strategy: str,
    url: str,
    seed: int,
    central: float,
    group: Any,
) -> dict[str, Any]:
    """One federation through the portal: a model from the template, a series of rounds,
    one SDK client per shop over HTTP, federated evaluation after every round."""
    from clients import services as client_services
    from clients.sdk import FlportalClient
    from clients.sdk import models as sdk_models
    from clients.sdk.cli import evaluate_pending, run_merchant
    from rounds import services
    from rounds.aggregation.dp import noise_for_budget
    from rounds.models import Round, Update
    from rounds.services.privacy import privacy_report

    tag = f"{task.name}-{strategy}-{int(time.time())}"
    params = {"mu": 0.01} if strategy == "fedprox" else {}
    privacy = None
    if strategy == "fedavg-dp":  # central DP-FedAvg: every round inside epsilon 8 at delta 1e-5
        sigma = noise_for_budget(epsilon_budget=DP_EPSILON, rounds=rounds, q=1.0, delta=DP_DELTA)
        privacy = {
            "clip_norm": task.dp_clip,
            "noise_multiplier": sigma,
            "delta": DP_DELTA,
            "epsilon_budget": DP_EPSILON,
        }
    fl_model = services.fl_model_create_from_template(
        name=tag,
        slug=tag,
        template=task.template,
        dims=dims,
        training_hints=task.hints,
        strategy=strategy.removesuffix("-dp"),
        strategy_params=params,
        seed=seed,
        privacy=privacy,
    )
    for merchant in client_services.Merchant.objects.filter(status="active"):
        client_services.merchant_set_status(merchant=merchant, status="suspended")
    tokens, shop_of = [], {}
    for index, shop in enumerate(split.shops):
        merchant = client_services.merchant_create(
            name=f"{tag} {shop.name}", slug=f"{tag}-{index}", status="active"
        )
        tokens.append(client_services.token_issue(merchant=merchant)[1])
        shop_of[merchant.slug] = shop.name
    created = [
        services.round_create(fl_model=fl_model, min_updates=len(split.shops), duration_seconds=600)
        for _ in range(rounds)
    ]
    started = time.monotonic()
    errors: list[BaseException] = []

    def merchant_thread(index: int) -> None:
        shop = split.shops[index]
        trainer = sdk_models.make_trainer(
            _template_module(task.template),
            lambda: (shop.train, shop.test),
            seed=seed + index,
            **dims,
        )
        try:
            with FlportalClient(url, tokens[index]) as client:
                run_merchant(client, trainer, max_rounds=rounds, poll_interval=0.05)
                deadline = time.monotonic() + 120
                while (
                    Round.objects.filter(pk=created[-1].pk)
                    .exclude(status__in=["completed", "failed", "cancelled"])
                    .exists()
                ):
                    if time.monotonic() > deadline:
                        raise TimeoutError("the last round did not finish")
                    time.sleep(0.05)
                evaluate_pending(client, trainer)
        except BaseException as exc:  # reported after the threads end
            errors.append(exc)

    threads = [threading.Thread(target=merchant_thread, args=(i,)) for i in range(len(tokens))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]
    elapsed = time.monotonic() - started
    summary = services.evaluation_summary(fl_model=fl_model)
    if task.metric == "rmse":  # user embeddings live at the shops: combine their evaluations
        curve = [_global_metric(task, row) for row in summary]
    else:  # score each published version on the union of the shops' held-out rows
        curve = [_version_metric(task, fl_model, row["version"], split) for row in summary]
    final = curve[-1] if curve else float("nan")
    last = summary[-1]["merchants"] if summary else {}
    per_shop = {
        shop_of[slug]: m.get(f"test_{task.metric}", m.get(task.metric)) for slug, m in last.items()
    }
    reached = next(
        (
            i + 1
            for i, value in enumerate(curve)
            if _meets(task, value, central, dp=privacy is not None)
        ),
        None,
    )
    sent = sum(u.size_bytes for u in Update.objects.filter(fl_round__fl_model=fl_model))
    report = privacy_report(fl_model)
    return {
        "metric": final,
        "epsilon": report.get("epsilon_spent"),
        "noise_multiplier": report.get("noise_multiplier"),
        "curve": curve,
        "rounds_to_target": reached,
        "per_shop": per_shop,
        "seconds": elapsed,
        "bytes_sent_per_shop": sent / len(split.shops),
    }


def _version_metric(task: Task, fl_model: Any, number: int, split: Any) -> float:
    from clients.sdk import codec
    from clients.sdk import models as sdk_models
    from flportal.datasets import pooled
    from rounds import artifacts

    module = sdk_models.TEMPLATES[_template_module(task.template)]
    version = fl_model.versions.get(number=number)
    with artifacts.local_path(version.weights.name) as path:
        weights = {k: np.array(v) for k, v in codec.open_arrays(path).items()}
    _, test = pooled(split, test="shops")
    return float(module.evaluate(weights, test)[task.metric])


def _global_metric(task: Task, row: dict[str, Any]) -> float:
    """The union-of-held-out-sets metric from the shops' federated evaluations: RMSE from the
    example-weighted mean squared error; AUC as the example-weighted mean of shop AUCs."""
    items = list(row["merchants"].values())
    key = next(k for k in (f"test_{task.metric}", task.metric) if k in items[0])
    total = sum(i["num_examples"] for i in items)
    if task.metric == "rmse":
        return float(np.sqrt(sum(i[key] ** 2 * i["num_examples"] for i in items) / total))
    return float(sum(i[key] * i["num_examples"] for i in items) / total)


def _meets(task: Task, value: float, central: float, *, dp: bool = False) -> bool:
    if task.metric == "rmse":
        return value <= 0.945
    return value >= central - (0.03 if dp else 0.01)


def _print(row: dict[str, Any], *, as_json: bool) -> None:
    if as_json:
        print(json.dumps(row, default=float))
        return
    solo_mean = np.mean([s["test"] for s in row["solo"].values()])
    print(
        f"\n{row['task']} ({row['template']}, {row['shops']} shops, {row['rounds']} rounds) — "
        f"test {row['metric']}; target: {row['target']}"
    )
    print(f"  centralised (pooled)   {row['centralised']:.4f}")
    print(f"  solo (mean of shops)   {solo_mean:.4f}")
    for strategy, fed in row["federated"].items():
        print(
            f"  federated {strategy:<8}     {fed['metric']:.4f}   rounds to target: "
            f"{fed['rounds_to_target']}   {fed['bytes_sent_per_shop'] / 1e3:.1f} kB sent/shop   "
            f"{fed['seconds']:.1f} s"
        )
        better = sum(
            1
            for shop, v in fed["per_shop"].items()
            if v is not None
            and (
                v > row["solo"].get(shop, {}).get("test", np.inf)
                if row["metric"] != "rmse"
                else v < row["solo"].get(shop, {}).get("test", -np.inf)
            )
        )
        shared = [shop for shop, v in fed["per_shop"].items() if v is not None]
        fed_mean = np.mean([fed["per_shop"][shop] for shop in shared]) if shared else np.nan
        solo_mean_shared = (
            np.mean([row["solo"][shop]["test"] for shop in shared]) if shared else np.nan
        )
        print(
            f"      per-shop mean on own test: federated {fed_mean:.4f} vs solo "
            f"{solo_mean_shared:.4f}"
        )
        print(
            f"      shops better than solo: {better}/{row['shops']}"
            + (
                f"   DP: epsilon {fed['epsilon']:.2f} at delta {DP_DELTA:g}, "
                f"noise multiplier {fed['noise_multiplier']:.2f}"
                if fed.get("epsilon")
                else ""
            )
        )


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


if __name__ == "__main__":
    raise SystemExit(main())
