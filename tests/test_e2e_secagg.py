"""Secure aggregation end to end over real HTTP: uvicorn, a Celery worker and beat; five SDK
merchants, one of which drops out after sharing its keys. The new version is the example-weighted
average of the four survivors' models, and the server never stored an update in the clear."""

from __future__ import annotations

import base64
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from clients import services as client_services
from clients.sdk import FlportalClient, codec
from clients.sdk import secagg as sa
from clients.sdk.cli import run_merchant
from clients.sdk.secure import Dropped, participate_secure
from rounds import artifacts, services
from rounds.models import Round, SecAggParticipant, SecAggShare
from tests.factories import MerchantFactory, make_fl_model, token_for
from tests.test_e2e import TENSORS, RecordingTrainer, running_stack

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True), pytest.mark.timeout(240)]


def test_five_merchants_one_drops_after_sharing_and_the_server_sees_only_the_sum(tmp_path: Path):
    merchants = [MerchantFactory() for _ in range(5)]
    tokens = [token_for(m) for m in merchants]
    identities = []
    for merchant in merchants:
        private, public = sa.generate_keypair()
        client_services.merchant_register_key(
            merchant=merchant, public_key=base64.b64encode(public).decode()
        )
        identities.append(private)
    fl_model = make_fl_model(
        slug="secure-e2e",
        tensors=TENSORS,
        init="random",
        secure_aggregation={"clip_range": 1.0, "max_weight": 1000, "phase_seconds": 20},
    )
    trainers = [RecordingTrainer(shop) for shop in range(5)]
    results: dict[int, object] = {}

    with running_stack(tmp_path) as url:
        fl_round = services.round_create(fl_model=fl_model, min_updates=3, duration_seconds=8)
        assert fl_round.secagg_phase == "advertise"

        def survivor(i: int) -> None:
            try:
                with FlportalClient(url, tokens[i]) as client:
                    results[i] = run_merchant(
                        client, trainers[i], max_rounds=1, poll_interval=0.1, identity=identities[i]
                    )
            except BaseException as exc:  # surfaced below
                results[i] = exc

        def dropper(i: int) -> None:
            stop = threading.Event()

            def after(phase: str) -> None:
                if phase == "share":
                    stop.set()  # the shop goes offline right after sharing its keys

            try:
                with FlportalClient(url, tokens[i]) as client:
                    info = client.round(fl_round.pk)
                    participate_secure(
                        client,
                        trainers[i],
                        info,
                        identity=identities[i],
                        stop=stop,
                        after_phase=after,
                    )
                results[i] = "finished"
            except Dropped:
                results[i] = "dropped"
            except BaseException as exc:
                results[i] = exc

        threads = [threading.Thread(target=survivor, args=(i,)) for i in range(4)]
        threads.append(threading.Thread(target=dropper, args=(4,)))
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=120)
        assert results == {0: 1, 1: 1, 2: 1, 3: 1, 4: "dropped"}

        deadline = time.monotonic() + 60
        while Round.objects.get(pk=fl_round.pk).status not in {"completed", "failed"}:
            assert time.monotonic() < deadline, Round.objects.get(pk=fl_round.pk).secagg_phase
            time.sleep(0.1)

    fl_round.refresh_from_db()
    assert fl_round.status == "completed", fl_round.failure_reason
    version = fl_round.result_version
    survivors = [trainers[i].sent[fl_round.number] for i in range(4)]
    total = sum(n for _, n in survivors)
    quantizer = sa.Quantizer(clip_range=1.0, max_weight=1000, participants=5)
    with artifacts.local_path(version.weights.name) as path:
        stored = codec.decode(path.read_bytes())
    for spec in TENSORS:
        name = spec["name"]
        expected = sum(w[name].astype(np.float64) * n for w, n in survivors) / total
        np.testing.assert_allclose(stored[name], expected, atol=1e-5 + 5 / quantizer.scale / total)
    assert version.aggregation["survivors"] == 4
    assert version.aggregation["dropped_recovered"] == 1

    # what the server kept for this round holds no individual update in the clear
    blobs: list[bytes] = []
    for member in SecAggParticipant.objects.filter(fl_round=fl_round):
        if member.masked:
            with artifacts.local_path(member.masked.name) as path:
                blobs.append(path.read_bytes())
    for share in SecAggShare.objects.filter(fl_round=fl_round):
        blobs += [bytes(share.sealed), bytes(share.revealed or b"")]
    for weights, _ in survivors:
        flat = np.concatenate([weights[s["name"]].ravel() for s in TENSORS]).tobytes()
        for needle in (flat[:32], flat[-32:], codec.encode(weights)[-32:]):
            assert not any(needle in blob for blob in blobs)
    assert not fl_round.updates.exists()
    # only the trainer's scalar metrics travel in the clear, nothing derived from the change
    reported = SecAggParticipant.objects.filter(fl_round=fl_round, masked_at__isnull=False)
    assert [sorted(m.metrics) for m in reported] == [["loss"]] * 4
    phases = [e.data["phase"] for e in fl_round.events.filter(kind="secagg.phase").order_by("id")]
    assert phases == ["advertise", "share", "mask", "unmask"]
