"""Secure aggregation: the cryptographic core, and the four phases through the real merchant
API (in process) with drop-outs, replays, tampering and a round that falls below threshold."""

from __future__ import annotations

import base64
import os
from collections.abc import Iterator, Mapping

import httpx
import numpy as np
import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from django.test import Client

from clients.sdk import FlportalClient, codec
from clients.sdk import secagg as sa
from clients.sdk.client import ApiError, RoundInfo
from rounds import artifacts, services
from rounds.models import Round, SecAggParticipant, SecAggShare
from tests.factories import MerchantFactory, make_fl_model, token_for

TENSORS = [
    {"name": "bias", "shape": [3], "dtype": "float32"},
    {"name": "weight", "shape": [5, 3], "dtype": "float32"},
]
pytestmark = pytest.mark.django_db


# -- the core -------------------------------------------------------------------------------


def test_prg_is_aes_256_ctr_keystream():
    seed = os.urandom(32)
    expected = Cipher(algorithms.AES(seed), modes.CTR(bytes(16))).encryptor().update(bytes(4003))
    words = sa.prg_uint32(seed, 1000)
    assert words.tobytes() == expected[:4000]
    assert not np.array_equal(words, sa.prg_uint32(os.urandom(32), 1000))


def test_shamir_rebuilds_from_any_t_shares_and_not_from_fewer():
    secret = os.urandom(32)
    shares = sa.shamir_split(secret, xs=[1, 2, 3, 4, 5, 6], threshold=4)
    for subset in ([1, 2, 3, 4], [3, 4, 5, 6], [1, 3, 5, 6, 2]):
        assert sa.shamir_combine({x: shares[x] for x in subset}) == secret
    try:  # below threshold: either detected, or some other value
        rebuilt = sa.shamir_combine({x: shares[x] for x in [1, 2, 3]})
    except sa.SecAggError:
        rebuilt = None
    assert rebuilt != secret


def test_quantizer_round_trip_is_within_the_stated_error_and_weights_are_exact():
    rng = np.random.default_rng(0)
    q = sa.Quantizer(clip_range=0.5, max_weight=1000, participants=4)
    values = [rng.uniform(-0.5, 0.5, 200) for _ in range(4)]
    weights = [10, 999, 1, 500]
    total = np.zeros(201, np.uint32)
    for v, w in zip(values, weights, strict=True):
        total += q.encode(v, weight=w)
    weighted, weight = q.decode(total)
    expected = sum(w * v for v, w in zip(values, weights, strict=True))
    assert weight == sum(weights)
    assert np.abs(weighted - expected).max() <= 4 * 0.5 / q.scale
    clipped = q.encode(np.array([3.0, -3.0]), weight=1)
    assert np.allclose(q.decode(clipped)[0], [0.5, -0.5], atol=1 / q.scale)
    with pytest.raises(sa.SecAggError):
        q.encode(values[0], weight=1001)
    with pytest.raises(sa.SecAggError):
        sa.Quantizer(clip_range=1.0, max_weight=2**30, participants=4)


def test_masks_cancel_in_the_sum_and_dropped_members_masks_can_be_removed():
    n, size, context = 6, 1000, b"ctx"
    graph = sa.neighbour_graph(list(range(1, n + 1)), neighbours=4, seed=b"graph")
    keys = {u: sa.generate_keypair() for u in graph}
    seeds = {u: os.urandom(32) for u in graph}
    q = sa.Quantizer(clip_range=1.0, max_weight=1, participants=n)
    rng = np.random.default_rng(1)
    inputs = {u: rng.uniform(-1, 1, size) for u in graph}

    def pair(u: int, v: int) -> bytes:
        return sa.agree(keys[u][0], keys[v][1], info=sa.mask_info(context, u, v))

    masked = {
        u: sa.mask(
            q.encode(inputs[u], weight=1),
            index=u,
            self_seed=seeds[u],
            pairwise={v: pair(u, v) for v in graph[u]},
        )
        for u in graph
    }
    assert pair(1, graph[1][0]) == pair(graph[1][0], 1)  # both sides agree the same seed
    dropped = 4
    survivors = [u for u in graph if u != dropped]
    total = np.zeros(size + 1, np.uint32)
    for u in survivors:
        total += masked[u]
        sa.remove_self_mask(total, seeds[u])
    for v in graph[dropped]:
        sa.remove_pair_mask(total, survivor=v, dropped=dropped, seed=pair(dropped, v))
    weighted, weight = q.decode(total)
    assert weight == len(survivors)
    assert np.abs(weighted - sum(inputs[u] for u in survivors)).max() < n / q.scale
    # a single masked input says nothing about its input: it is uniform noise
    correlation = np.corrcoef(masked[1][:-1].astype(np.float64), inputs[1])[0, 1]
    assert abs(correlation) < 0.15


def test_the_neighbour_graph_is_symmetric_and_k_regular():
    graph = sa.neighbour_graph(list(range(1, 31)), neighbours=6, seed=b"s")
    assert all(len(vs) == 6 and u not in vs for u, vs in graph.items())
    assert all(u in graph[v] for u, vs in graph.items() for v in vs)
    complete = sa.neighbour_graph([1, 2, 3, 4], neighbours=10, seed=b"s")
    assert complete[1] == [2, 3, 4]
    with pytest.raises(sa.SecAggError):
        sa.neighbour_graph(list(range(1, 10)), neighbours=3, seed=b"s")


def test_sealed_shares_are_bound_to_round_sender_and_recipient():
    a_private, a_public = sa.generate_keypair()
    b_private, b_public = sa.generate_keypair()
    info = sa.share_info(b"round-1", 1, 2)
    sealed = sa.seal(sa.agree(a_private, b_public, info=info), b"secret", associated=info)
    assert sa.unseal(sa.agree(b_private, a_public, info=info), sealed, associated=info) == b"secret"
    for other in (sa.share_info(b"round-2", 1, 2), sa.share_info(b"round-1", 3, 2)):
        with pytest.raises(sa.SecAggError) as raised:
            sa.unseal(sa.agree(b_private, a_public, info=other), sealed, associated=other)
        assert raised.value.code == "share_tampered"
    flipped = bytearray(sealed)
    flipped[20] ^= 1
    with pytest.raises(sa.SecAggError):
        sa.unseal(sa.agree(b_private, a_public, info=info), bytes(flipped), associated=info)


def test_low_order_public_keys_are_refused():
    with pytest.raises(sa.SecAggError):
        sa.check_public_key(bytes(32))
    with pytest.raises(sa.SecAggError):
        sa.check_public_key(b"short")


# -- the phases through the merchant API ----------------------------------------------------


class DjangoTransport(httpx.BaseTransport):
    """The SDK's HTTP requests answered by the Django app in this process (test client)."""

    def __init__(self) -> None:
        self.client = Client()

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        extra = {
            f"HTTP_{name.upper().replace('-', '_')}": value
            for name, value in request.headers.items()
            if name.lower() not in {"content-type", "content-length", "host"}
        }
        response = self.client.generic(
            request.method,
            request.url.raw_path.decode(),
            data=request.read(),
            content_type=request.headers.get("content-type", ""),
            **extra,
        )
        body = b"".join(response.streaming_content) if response.streaming else response.content
        return httpx.Response(response.status_code, headers=dict(response.items()), content=body)


class Member:
    """One merchant driven phase by phase through the SDK client and the real views."""

    def __init__(self, examples: int, seed: int) -> None:
        self.merchant = MerchantFactory()
        self.client = FlportalClient("http://portal", token_for(self.merchant), retries=0)
        self.client._http = httpx.Client(
            base_url="http://portal",
            transport=DjangoTransport(),
            headers=dict(self.client._http.headers),
        )
        self.identity, public = sa.generate_keypair()
        self.client.register_public_key(public)
        self.examples = examples
        self.rng = np.random.default_rng(seed)
        self.session: sa.MemberSession | None = None
        self.weights: dict[str, np.ndarray] = {}

    def round(self, round_id: int) -> RoundInfo:
        return self.client.round(round_id)

    def advertise(self, round_id: int) -> dict:
        state = self.client.secagg_state(round_id)
        self.session = sa.MemberSession(
            self.identity, context=state["context"], index=state["index"]
        )
        return self.client.secagg_advertise(round_id, self.session.s_public)

    def share(self, round_id: int) -> dict:
        state = self.client.secagg_state(round_id)
        bundles = self.session.share_bundles(state["neighbours"], state["threshold"])
        return self.client.secagg_share(round_id, bundles)

    def mask(self, round_id: int) -> dict:
        info = self.round(round_id)
        base = self.client.download_weights(info)
        self.weights = {
            n: (w + self.rng.normal(0, 0.05, w.shape)).astype(w.dtype) for n, w in base.items()
        }
        state = self.client.secagg_state(round_id)
        self.session.open_shares(state["neighbours"], state["shares"])
        delta = sa.flatten_delta(self.weights, base, [t.name for t in info.tensors])
        if state["l2_clip_norm"]:  # DP: clip the change on the client, as the SDK does
            delta, _ = sa.l2_clip(delta, state["l2_clip_norm"])
        self.sent_delta = delta
        q = sa.Quantizer(
            clip_range=state["clip_range"],
            max_weight=state["max_weight"],
            participants=state["members"],
        )
        weight = min(self.examples, q.max_weight)
        masked = self.session.masked_input(state["neighbours"], delta, weight=weight, quantizer=q)
        return self.client.secagg_masked(round_id, masked, metrics={"loss": 0.5})

    def reveal(self, round_id: int) -> dict:
        state = self.client.secagg_state(round_id)
        return self.client.secagg_reveal(
            round_id, self.session.reveal(state["neighbours"], state["threshold"])
        )


@pytest.fixture
def secure_model():
    return make_fl_model(
        slug="secure",
        tensors=TENSORS,
        init="random",
        secure_aggregation={"clip_range": 0.5, "max_weight": 1000, "phase_seconds": 30},
    )


@pytest.fixture
def members() -> list[Member]:
    return [Member(examples=20 * (i + 1), seed=i) for i in range(5)]


def _open(fl_model, **kwargs) -> Round:
    return services.round_create(
        fl_model=fl_model, min_updates=kwargs.pop("min_updates", 3), duration_seconds=120, **kwargs
    )


def _stored_bytes(fl_round: Round) -> Iterator[bytes]:
    """Everything the server keeps for this round: files and every binary/JSON column."""
    for member in SecAggParticipant.objects.filter(fl_round=fl_round):
        for value in (member.c_public_key, member.s_public_key, str(member.metrics).encode()):
            if value is not None:
                yield bytes(value)
        if member.masked:
            with artifacts.local_path(member.masked.name) as path:
                yield path.read_bytes()
    for share in SecAggShare.objects.filter(fl_round=fl_round):
        yield bytes(share.sealed)
        if share.revealed is not None:
            yield bytes(share.revealed)
    for update in fl_round.updates.all():  # there must be none
        yield update.sha256.encode()


def _encodings(member: Member, base: Mapping[str, np.ndarray], q: sa.Quantizer) -> list[bytes]:
    names = [t["name"] for t in TENSORS]
    delta = sa.flatten_delta(member.weights, base, names)
    plain = [
        codec.encode(member.weights),
        np.concatenate([member.weights[n].ravel() for n in names]).tobytes(),
        q.encode(delta, weight=min(member.examples, q.max_weight)).tobytes(),
    ]
    return [blob[i : i + 32] for blob in plain for i in (0, len(blob) // 2)]


def test_five_members_one_drops_after_sharing_and_the_sum_is_the_weighted_average(
    secure_model, members, aggregate_calls, django_capture_on_commit_callbacks
):
    fl_round = _open(secure_model)
    assert fl_round.secagg_phase == "advertise" and fl_round.secagg["members"] == 5
    for m in members:
        m.advertise(fl_round.pk)
    assert Round.objects.get(pk=fl_round.pk).secagg_phase == "share"
    for m in members:
        m.share(fl_round.pk)
    assert Round.objects.get(pk=fl_round.pk).secagg_phase == "mask"
    survivors, dropped = members[:4], members[4]
    for m in survivors:
        m.mask(fl_round.pk)
    # the dropped member never uploads: the mask phase ends at its deadline
    assert services.rounds_tick(now=Round.objects.get(pk=fl_round.pk).phase_deadline_at)
    fl_round.refresh_from_db()
    assert fl_round.secagg_phase == "unmask"
    state = survivors[0].client.secagg_state(fl_round.pk)
    assert {n["index"]: n["survived"] for n in state["neighbours"]}[
        SecAggParticipant.objects.get(fl_round=fl_round, merchant=dropped.merchant).index
    ] is False
    with django_capture_on_commit_callbacks(execute=True):
        for m in survivors:
            m.reveal(fl_round.pk)
    fl_round.refresh_from_db()
    assert fl_round.status == "aggregating" and aggregate_calls == [fl_round.pk]
    assert services.round_aggregate(round_id=fl_round.pk) == 2

    fl_round.refresh_from_db()
    version = fl_round.result_version
    with artifacts.local_path(fl_round.base_version.weights.name) as path:
        base = codec.decode(path.read_bytes())
    with artifacts.local_path(version.weights.name) as path:
        result = codec.decode(path.read_bytes())
    total = sum(m.examples for m in survivors)
    q = sa.Quantizer(clip_range=0.5, max_weight=1000, participants=5)
    for name in base:
        expected = sum(m.weights[name].astype(np.float64) * m.examples for m in survivors) / total
        # float32 storage plus at most 5/2 quantization units of the sum, over the total weight
        assert np.allclose(result[name], expected, atol=1e-5 + 5 / q.scale / total)
    assert version.aggregation["survivors"] == 4
    assert version.aggregation["dropped_recovered"] == 1
    assert version.aggregation["total_weight"] == total

    stored = list(_stored_bytes(fl_round))
    for m in survivors:
        for needle in _encodings(m, base, q):
            assert not any(needle in blob for blob in stored), "an update is stored in the clear"
    assert not fl_round.updates.exists()
    kinds = list(fl_round.events.values_list("kind", flat=True))
    assert kinds.count("secagg.phase") == 4 and "round.completed" in kinds


def test_the_round_fails_clearly_when_fewer_than_t_members_survive(secure_model, members):
    fl_round = _open(secure_model, min_updates=2)
    assert fl_round.secagg["threshold"] == 3
    for m in members:
        m.advertise(fl_round.pk)
    for m in members:
        m.share(fl_round.pk)
    for m in members[:2]:
        m.mask(fl_round.pk)
    services.rounds_tick(now=Round.objects.get(pk=fl_round.pk).phase_deadline_at)
    fl_round.refresh_from_db()
    assert fl_round.status == "failed"
    assert "only 2 of 5 members completed the mask phase; it needs 3" in fl_round.failure_reason


def test_a_survivor_refuses_to_unmask_below_threshold():
    session = sa.MemberSession(sa.generate_keypair()[0], context="c", index=1)
    with pytest.raises(sa.SecAggError) as raised:
        session.reveal([{"index": 2, "survived": False}, {"index": 3, "survived": False}], 3)
    assert raised.value.code == "too_few_survivors"


def test_replayed_out_of_phase_and_malformed_messages_are_refused(secure_model, members):
    fl_round = _open(secure_model)
    first = members[0]
    first.advertise(fl_round.pk)
    again = first.client.secagg_advertise(fl_round.pk, first.session.s_public)  # a retry
    assert again["done"]["advertise"] is True
    with pytest.raises(ApiError) as raised:
        first.client.secagg_advertise(fl_round.pk, sa.generate_keypair()[1])
    assert (raised.value.status, raised.value.code) == (409, "secagg_already_submitted")
    with pytest.raises(ApiError) as raised:
        first.client.secagg_share(fl_round.pk, {1: b"x"})
    assert (raised.value.status, raised.value.code) == (409, "secagg_wrong_phase")
    with pytest.raises(ApiError) as raised:
        members[1].client.secagg_advertise(fl_round.pk, bytes(32))
    assert (raised.value.status, raised.value.code) == (400, "invalid_public_key")
    with pytest.raises(ApiError) as raised:
        members[1].client.upload_update(
            fl_round.pk,
            {t["name"]: np.zeros(t["shape"], "float32") for t in TENSORS},
            num_examples=5,
        )
    assert (raised.value.status, raised.value.code) == (409, "secure_aggregation_required")
    for m in members[1:]:
        m.advertise(fl_round.pk)
    state = first.client.secagg_state(fl_round.pk)
    bundles = first.session.share_bundles(state["neighbours"], state["threshold"])
    with pytest.raises(ApiError) as raised:
        first.client.secagg_share(fl_round.pk, dict(list(bundles.items())[:2]))
    assert (raised.value.status, raised.value.code) == (400, "secagg_wrong_recipients")
    with pytest.raises(ApiError) as raised:
        first.client.secagg_share(fl_round.pk, {k: v[:-1] for k, v in bundles.items()})
    assert raised.value.code == "secagg_invalid_share"
    response = first.client._http.post(
        f"/api/v1/rounds/{fl_round.pk}/secagg/shares", json={"shares": {"first": "!!"}}
    )
    assert response.status_code == 400 and response.json()["error"] == "secagg_invalid_index"
    assert SecAggShare.objects.filter(fl_round=fl_round).count() == 0  # nothing was stored


def test_a_tampered_or_replayed_share_is_detected_by_its_recipient(secure_model, members):
    fl_round = _open(secure_model)
    for m in members:
        m.advertise(fl_round.pk)
    for m in members:
        m.share(fl_round.pk)
    target = members[0]
    index = SecAggParticipant.objects.get(fl_round=fl_round, merchant=target.merchant).index
    row = SecAggShare.objects.filter(fl_round=fl_round, recipient=index).exclude(sender=index)[0]
    sealed = bytearray(row.sealed)
    sealed[-1] ^= 0x01  # the server (or anyone on the way) flips a bit
    SecAggShare.objects.filter(pk=row.pk).update(sealed=bytes(sealed))
    state = target.client.secagg_state(fl_round.pk)
    with pytest.raises(sa.SecAggError) as raised:
        target.session.open_shares(state["neighbours"], state["shares"])
    assert raised.value.code == "share_tampered"
    # a share replayed from another recipient's bundle fails too
    other = SecAggShare.objects.filter(fl_round=fl_round).exclude(recipient=index)[0]
    replay = [{"sender": other.sender, "sealed": base64.b64encode(bytes(other.sealed)).decode()}]
    with pytest.raises(sa.SecAggError):
        target.session.open_shares(state["neighbours"], replay)


def test_merchants_without_a_registered_key_are_left_out(secure_model, members):
    keyless = MerchantFactory()
    fl_round = _open(secure_model)
    assert not fl_round.participants.filter(pk=keyless.pk).exists()
    assert fl_round.events.filter(kind="secagg.excluded").exists()
    client = Client(HTTP_AUTHORIZATION=f"Bearer {token_for(keyless)}")
    response = client.get(f"/api/v1/rounds/{fl_round.pk}/secagg")
    assert response.status_code == 404


@pytest.mark.parametrize(
    ("raw", "extra", "code"),
    [
        ({"neighbours": 3}, {}, "invalid_secagg"),
        ({"threshold": 9, "neighbours": 4}, {}, "invalid_secagg"),
        ({"bogus": 1}, {}, "invalid_secagg"),
        ({"clip_range": -1}, {}, "invalid_secagg"),
        ({"phase_seconds": 1}, {}, "invalid_secagg"),
        ({"phase_seconds": 30}, {"strategy": "median"}, "secagg_needs_linear_strategy"),
        (
            {"phase_seconds": 30},
            {"strategy_params": {"clip_norm": 1.0}},
            "secagg_needs_linear_strategy",
        ),
        (
            {"phase_seconds": 30},
            {
                "privacy": {
                    "clip_norm": 1.0,
                    "noise_multiplier": 1.0,
                    "delta": 1e-5,
                    "epsilon_budget": 10.0,
                }
            },
            "secagg_needs_client_clipping",
        ),
    ],
)
def test_secure_aggregation_settings_are_validated(raw, extra, code):
    from flportal.errors import ValidationFailed

    with pytest.raises(ValidationFailed) as raised:
        make_fl_model(slug="refused", tensors=TENSORS, secure_aggregation=raw, **extra)
    assert raised.value.code == code
    assert not secure_model_exists("refused")


def secure_model_exists(slug: str) -> bool:
    from rounds.models import FederatedModel

    return FederatedModel.objects.filter(slug=slug).exists()


def test_registering_a_key_is_validated_and_idempotent(merchant_client, merchant):
    public = base64.b64encode(sa.generate_keypair()[1]).decode()
    for _ in range(2):
        response = merchant_client.put(
            "/api/v1/me/public-key", {"public_key": public}, content_type="application/json"
        )
        assert response.status_code == 200 and response.json()["public_key"] == public
    response = merchant_client.put(
        "/api/v1/me/public-key", {"public_key": "AAAA"}, content_type="application/json"
    )
    assert response.status_code == 400 and response.json()["error"] == "invalid_public_key"
    merchant.refresh_from_db()
    assert merchant.public_key == public


def test_an_operator_cannot_close_a_secure_round_early_but_can_cancel_it(secure_model, members):
    from flportal.errors import Conflict

    fl_round = _open(secure_model)
    with pytest.raises(Conflict) as raised:
        services.round_close(fl_round=fl_round)
    assert raised.value.code == "secagg_round_closes_itself"
    services.round_cancel(fl_round=fl_round)
    fl_round.refresh_from_db()
    assert fl_round.status == "cancelled"
    with pytest.raises(ApiError) as refused:
        members[0].advertise(fl_round.pk)
    assert refused.value.code == "round_not_open"
    assert services.rounds_tick(now=fl_round.phase_deadline_at)["secagg_phases"] == 0


def test_operators_see_the_phase_progress_and_dropped_members_live(
    secure_model, members, operator_client
):
    fl_round = _open(secure_model)
    for m in members:
        m.advertise(fl_round.pk)
    for m in members[:3]:
        m.share(fl_round.pk)
    fl_round.refresh_from_db()
    snapshot = services.round_snapshot(fl_round)
    assert snapshot["secagg"] | {"phase_deadline_at": None} == {
        "phase": "share",
        "phase_deadline_at": None,
        "threshold": 3,
        "neighbours": 4,
        "members": 5,
        "advertised": 5,
        "shared": 3,
        "masked": 0,
        "revealed": 0,
        "dropped_after_sharing": 0,
    }
    page = operator_client.get(f"/rounds/{fl_round.pk}/").content.decode()
    assert 'id="secagg-card"' in page and 'id="secagg-phase">share<' in page
    assert 'data-secagg="shared">3<' in page and "masked inputs" in page
    kinds = set(fl_round.events.values_list("kind", flat=True))
    assert {"secagg.phase", "secagg.advertise", "secagg.share"} <= kinds
    labels = set(fl_round.events.filter(kind="secagg.share").values_list("actor_label", flat=True))
    assert labels == {f"merchant:{m.merchant.slug}" for m in members[:3]}


def test_the_live_view_counts_masked_inputs_as_submissions_and_describes_each_phase(
    secure_model, members
):
    from rounds.services import live

    fl_round = _open(secure_model)
    for m in members:
        m.advertise(fl_round.pk)
    for m in members:
        m.share(fl_round.pk)
    for m in members[:2]:
        m.mask(fl_round.pk)
    fl_round.refresh_from_db()
    assert live.round_counts(fl_round) == {  # the other three have not fetched the weights yet
        "invited": 3,
        "downloaded": 0,
        "submitted": 2,
        "rejected": 0,
        "dropped": 0,
    }
    rows = {row["merchant"]: row for row in live.round_participants(fl_round)}
    for m in members[:2]:
        row = rows[m.merchant.slug]
        assert row["status"] == "submitted" and row["num_examples"] is None
    texts = [entry["text"] for entry in live.round_feed(fl_round)]
    slug = members[0].merchant.slug
    assert f"{slug} uploaded its masked input" in texts
    assert f"{slug} advertised its mask key" in texts
    assert any(t.startswith("Secure aggregation: mask phase, 5 members") for t in texts)


def test_dp_and_secure_aggregation_together_clip_on_clients_and_noise_the_unmasked_sum(
    members, django_capture_on_commit_callbacks, aggregate_calls
):
    from rounds.services.privacy import privacy_report

    clip, sigma = 0.05, 0.5
    fl_model = make_fl_model(
        slug="secure-dp",
        tensors=TENSORS,
        init="random",
        privacy={
            "clip_norm": clip,
            "noise_multiplier": sigma,
            "delta": 1e-5,
            "epsilon_budget": 50.0,
            "clip_mode": "client",
        },
        secure_aggregation={"phase_seconds": 30},
    )
    fl_round = _open(fl_model, min_updates=5)
    assert fl_round.secagg["max_weight"] == 1 and fl_round.secagg["l2_clip_norm"] == clip
    for phase in ("advertise", "share", "mask"):
        for m in members:
            getattr(m, phase)(fl_round.pk)
    with django_capture_on_commit_callbacks(execute=True):
        for m in members:
            m.reveal(fl_round.pk)
    assert services.round_aggregate(round_id=fl_round.pk) == 2
    fl_round.refresh_from_db()
    version = fl_round.result_version
    assert all(np.linalg.norm(m.sent_delta) <= clip * (1 + 1e-9) for m in members)
    with artifacts.local_path(fl_round.base_version.weights.name) as path:
        base = codec.decode(path.read_bytes())
    with artifacts.local_path(version.weights.name) as path:
        result = codec.decode(path.read_bytes())
    names = [t["name"] for t in TENSORS]
    got = sa.flatten_delta(result, base, names)
    mean = sum(m.sent_delta for m in members) / len(members)
    noise = got - mean  # what the server added: N(0, (sigma * C / n)^2) per coordinate
    expected_std = sigma * clip / len(members)
    assert version.aggregation["noise_std"] == pytest.approx(expected_std)
    # 18 coordinates: wide enough never to flake, narrow enough to catch no noise or a wrong /n
    assert 0.3 * expected_std < noise.std() < 2.2 * expected_std
    assert version.aggregation["epsilon_after"] == fl_round.privacy["epsilon_after"] > 0
    ledger = privacy_report(fl_model)["ledger"]
    assert [entry["round"] for entry in ledger] == [fl_round.number]
