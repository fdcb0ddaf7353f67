"""Secure aggregation benchmark: client masking against Flower 1.42's SecAgg+ client, and server
unmasking per dropped merchant (SPEC section 10, issue 4).

    python -m benchmarks.secagg                           # 1M params, k = 4 8 16; tables
    python -m benchmarks.secagg --neighbours 8 --repeat 9
    python -m benchmarks.secagg --params 10000 --repeat 1 --json   # smoke run, JSON lines

Everything is measured in this invocation, medians of ``--repeat`` timed runs after one
untimed warm-up run, the flportal and Flower runs interleaved. No Django.

1. Client masking, one merchant with k neighbours, 1M float32 parameters in, wire bytes out.

   - flportal (``clients.sdk.secagg``): ``MemberSession.open_shares`` (open the k + 1 sealed
     share bundles sent to it), ``masked_input`` (k X25519 + HKDF agreements, fixed-point
     quantization mod 2^32, self mask and k pairwise masks from ``prg_uint32``: AES-256-CTR
     keyed by the 32-byte HKDF output) and the safetensors encoding the SDK uploads (one uint32
     tensor: 4 bytes per parameter).
   - Flower 1.42: its own stage-2 function ``_collect_masked_vectors`` from
     ``flwr/client/mod/secure_aggregation/secaggplus_mod.py`` (what ``secaggplus_mod`` runs for
     the "collect masked vectors" stage), on the state its own ``_setup`` and ``_share_keys``
     left, with the ciphertexts its k neighbours' ``_share_keys`` produced: Fernet decryption
     of the shares, weighting, stochastic ``quantize``, ``pseudo_rand_gen`` self mask and k
     pairwise masks (ECDH P-384 + HKDF per neighbour), ``parameters_mod`` and
     ``ndarray_to_bytes``. No Flower server runs; the server's routing of ciphertexts is done
     here. Flower's masked vector is what ``ndarray_to_bytes`` makes of its int64 arrays: the
     bytes per parameter are measured, not assumed.
   - Flower's PRG: ``pseudo_rand_gen`` in
     ``flwr/common/secure_aggregation/secaggplus_utils.py`` XORs the seed's 4-byte words into
     one 32-bit integer and seeds ``np.random.RandomState`` (Mersenne Twister MT19937) with it:
     at most 2^32 distinct masks, and MT19937 is predictable from its output. The run checks
     this: two different 32-byte seeds with the same fold give identical Flower masks.

2. Share phase, for context: ``MemberSession.share_bundles`` (Shamir shares of the self-mask
   seed and of the mask key for k + 1 holders, each sealed with ChaCha20-Poly1305 under an
   X25519 + HKDF key) against Flower's ``_share_keys`` (PyCryptodome Shamir, ECDH P-384,
   Fernet), same k.

3. Server unmasking, n members (default 20) with k neighbours, d of them dropped after sharing
   their keys. Mirrors ``rounds.services.secagg.aggregate`` with the core functions, on masked
   vectors held in memory (the portal memory-maps them from storage): the fixed cost is the sum
   of the n - d masked vectors, rebuilding each survivor's self-mask seed from Shamir shares
   and removing it, and decoding; the cost per dropped merchant is rebuilding its mask key from
   Shamir shares and removing the k pairwise masks its surviving neighbours added.

Correctness, checked in every run (exit status 1 on a mismatch): for each k, a group of k + 1
members (each the neighbour of all others) masks with both implementations and the unmasked
sum is compared with the plain (weighted) sum of the inputs, within each scheme's quantization
error; the unmasking rows check that the unmasked total equals the sum of the survivors'
quantized inputs word for word.
"""

from __future__ import annotations

import argparse
import base64
import copy
import importlib
import json
import platform
import secrets
import statistics
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from benchmarks._measure import free, progress, timed
from clients.sdk import codec
from clients.sdk import secagg as sa

SEED = 20240917
CLIP_RANGE = 1.0  # flportal's default clip_range (rounds.services.secagg.DEFAULTS)
MAX_WEIGHT = 100_000  # flportal's default max_weight
FLOWER_DEFAULTS = {  # SecAggPlusWorkflow's defaults in Flower 1.42
    "clipping_range": 8.0,
    "target_range": 2**22,
    "mod_range": 2**32,
    "max_weight": 1000.0,
}
TARGET = "flportal <= Flower"


# --------------------------------------------------------------------------- data


def make_inputs(members: int, params: int, seed: int) -> tuple[list[np.ndarray], list[int]]:
    """``members`` float32 model changes (scale 0.01) and example counts within Flower's
    default max_weight (1000), so neither implementation clips or warns."""
    rng = np.random.default_rng(seed)
    deltas = []
    for _ in range(members):
        delta = rng.standard_normal(params, dtype=np.float32)
        delta *= np.float32(0.01)
        deltas.append(delta)
    weights = [int(w) for w in rng.integers(50, 1000, size=members)]
    return deltas, weights


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


# --------------------------------------------------------------------------- flportal


@dataclass
class Group:
    """flportal members of one round, keys advertised and share bundles delivered, as the
    portal's phases would leave them (the server's routing is done in memory)."""

    context: str
    graph: dict[int, list[int]]
    threshold: int
    quantizer: sa.Quantizer
    identities: dict[int, tuple[bytes, bytes]]
    sessions: dict[int, sa.MemberSession]
    inbox: dict[int, list[dict[str, str]]] = field(default_factory=dict)

    def neighbours(self, u: int, dropped: frozenset[int] = frozenset()) -> list[dict[str, Any]]:
        """What the portal's state endpoint lists for member ``u``."""
        return [
            {
                "index": v,
                "c_public_key": _b64(self.identities[v][1]),
                "s_public_key": _b64(self.sessions[v].s_public),
                "survived": v not in dropped,
            }
            for v in self.graph[u]
        ]


def flportal_group(members: int, k: int, *, participants: int | None = None) -> Group:
    """``members`` merchants numbered 1..n with k neighbours each (every other one when
    k >= n - 1), threshold and quantizer as ``rounds.services.secagg.round_settings`` sets
    them; every member has shared its keys and opened the bundles sent to it."""
    indices = list(range(1, members + 1))
    context = f"bench:{secrets.token_hex(16)}"
    graph = sa.neighbour_graph(indices, neighbours=k, seed=context.encode())
    effective = len(graph[1])
    threshold = min(sa.default_threshold(effective), effective + 1)
    identities = {u: sa.generate_keypair() for u in indices}
    sessions = {u: sa.MemberSession(identities[u][0], context=context, index=u) for u in indices}
    quantizer = sa.Quantizer(
        clip_range=CLIP_RANGE, max_weight=MAX_WEIGHT, participants=participants or members
    )
    group = Group(context, graph, threshold, quantizer, identities, sessions)
    group.inbox = {u: [] for u in indices}
    for u in indices:
        for holder, sealed in sessions[u].share_bundles(group.neighbours(u), threshold).items():
            group.inbox[holder].append({"sender": str(u), "sealed": _b64(sealed)})
    for u in indices:
        sessions[u].open_shares(group.neighbours(u), group.inbox[u])
    return group


def flportal_mask_all(
    group: Group, deltas: Sequence[np.ndarray], weights: Sequence[int]
) -> dict[int, np.ndarray]:
    """Every member's masked input (member u gets deltas[u - 1])."""
    return {
        u: session.masked_input(
            group.neighbours(u), deltas[u - 1], weight=weights[u - 1], quantizer=group.quantizer
        )
        for u, session in group.sessions.items()
    }


def flportal_reveal(group: Group, dropped: frozenset[int]) -> dict[tuple[int, str], dict]:
    """The shares the survivors reveal, keyed as the server stores them: (sender, b|s)."""
    shares: dict[tuple[int, str], dict[int, bytes]] = {}
    for u, session in group.sessions.items():
        if u in dropped:
            continue
        for sender, share in session.reveal(group.neighbours(u, dropped), group.threshold).items():
            kind = "s" if sender in dropped else "b"
            shares.setdefault((sender, kind), {})[u] = share
    return shares


@dataclass
class Unmasked:
    total: np.ndarray
    sum_seconds: float
    self_unmask_seconds: float
    dropped_seconds: float


def flportal_unmask(
    group: Group,
    masked: dict[int, np.ndarray],
    shares: dict[tuple[int, str], dict[int, bytes]],
    dropped: frozenset[int],
) -> Unmasked:
    """What ``rounds.services.secagg.aggregate`` does between reading the masked files and
    decoding, on in-memory vectors."""
    survivors = [u for u in sorted(group.sessions) if u not in dropped]
    context = group.context.encode()
    started = time.perf_counter()
    total = masked[survivors[0]].astype("<u4", copy=True)
    for u in survivors[1:]:
        np.add(total, masked[u], out=total)
    summed = time.perf_counter()
    for u in survivors:
        sa.remove_self_mask(total, sa.shamir_combine(shares[(u, "b")]))
    self_masks = time.perf_counter()
    for u in sorted(dropped):
        partners = [v for v in group.graph[u] if v not in dropped]
        if not partners:
            continue
        s_private = sa.shamir_combine(shares[(u, "s")])
        for v in partners:
            seed = sa.agree(s_private, group.sessions[v].s_public, info=sa.mask_info(context, u, v))
            sa.remove_pair_mask(total, survivor=v, dropped=u, seed=seed)
    done = time.perf_counter()
    return Unmasked(total, summed - started, self_masks - summed, done - self_masks)


def flportal_round_trip(
    deltas: Sequence[np.ndarray], weights: Sequence[int], k: int
) -> tuple[np.ndarray, int, np.ndarray, float]:
    """Mask with every member of a group, unmask, decode: (weighted sum, total weight,
    expected weighted sum in float64, error bound)."""
    group = flportal_group(len(deltas), k)
    masked = flportal_mask_all(group, deltas, weights)
    unmasked = flportal_unmask(group, masked, flportal_reveal(group, frozenset()), frozenset())
    weighted, weight = group.quantizer.decode(unmasked.total)
    expected = np.zeros(deltas[0].size, dtype=np.float64)
    for delta, w in zip(deltas, weights, strict=True):
        expected += np.clip(delta.astype(np.float64), -CLIP_RANGE, CLIP_RANGE) * w
    # each member rounds to the nearest 1/scale: at most half a unit each (+ float slack)
    bound = 0.5 * len(deltas) / group.quantizer.scale * (1 + 1e-9) + 1e-9
    return weighted, weight, expected, bound


# --------------------------------------------------------------------------- Flower


def load_flower(disabled: bool) -> tuple[Any, str]:
    """Flower's SecAgg+ client module and helpers, or None and why not."""
    if disabled:
        return None, "disabled (--no-flower)"
    try:
        with warnings.catch_warnings():  # Flower's imports trip click/typer deprecations
            warnings.simplefilter("ignore")
            import flwr  # optional extra: imported only when measured
            from flwr.app import ConfigRecord
            from flwr.common import bytes_to_ndarray, ndarrays_to_parameters
            from flwr.common.secure_aggregation import (
                ndarrays_arithmetic,
                quantization,
                secaggplus_utils,
            )
            from flwr.common.secure_aggregation.crypto.shamir import combine_shares
            from flwr.common.secure_aggregation.secaggplus_constants import Key

            # the package re-exports the function under the module's name: load the module
            secaggplus_mod = importlib.import_module(
                "flwr.client.mod.secure_aggregation.secaggplus_mod"
            )
    except ImportError as exc:
        return None, f"not installed ({exc})"
    fl = argparse.Namespace(
        mod=secaggplus_mod,
        State=secaggplus_mod.SecAggPlusState,
        Key=Key,
        ConfigRecord=ConfigRecord,
        ndarrays_to_parameters=ndarrays_to_parameters,
        bytes_to_ndarray=bytes_to_ndarray,
        arithmetic=ndarrays_arithmetic,
        quantization=quantization,
        pseudo_rand_gen=secaggplus_utils.pseudo_rand_gen,
        combine_shares=combine_shares,
        version=flwr.__version__,
    )
    return fl, f"flwr {flwr.__version__}"


@dataclass
class FlowerGroup:
    """Flower SecAgg+ client states after its setup and share-keys stages, every member the
    neighbour of all others, with the ciphertexts its server would forward to each node."""

    states: dict[int, Any]
    public_keys: dict[int, tuple[bytes, bytes]]
    forward: dict[int, tuple[list[int], list[bytes]]]
    threshold: int


def flower_setup_configs(fl: Any, members: int, threshold: int) -> Any:
    key = fl.Key
    return fl.ConfigRecord(
        {
            key.SAMPLE_NUMBER: members,
            key.SHARE_NUMBER: members,  # k + 1: the neighbours and the node itself
            key.THRESHOLD: threshold,
            key.CLIPPING_RANGE: FLOWER_DEFAULTS["clipping_range"],
            key.TARGET_RANGE: FLOWER_DEFAULTS["target_range"],
            key.MOD_RANGE: FLOWER_DEFAULTS["mod_range"],
            key.MAX_WEIGHT: FLOWER_DEFAULTS["max_weight"],
        }
    )


def flower_share_configs(fl: Any, group: FlowerGroup) -> Any:
    return fl.ConfigRecord({str(nid): list(pks) for nid, pks in group.public_keys.items()})


def flower_group(fl: Any, members: int, threshold: int) -> FlowerGroup:
    """Run Flower's ``_setup`` and ``_share_keys`` for nodes 1..members and route the
    ciphertexts as its SecAggPlusWorkflow does (``forward_ciphertexts``/``forward_srcs``)."""
    key = fl.Key
    states: dict[int, Any] = {}
    public_keys: dict[int, tuple[bytes, bytes]] = {}
    for nid in range(1, members + 1):
        state = fl.State()
        state.nid = nid
        reply = fl.mod._setup(state, flower_setup_configs(fl, members, threshold))
        states[nid] = state
        public_keys[nid] = (reply[key.PUBLIC_KEY_1], reply[key.PUBLIC_KEY_2])
    group = FlowerGroup(states, public_keys, {nid: ([], []) for nid in states}, threshold)
    for nid, state in states.items():
        reply = fl.mod._share_keys(state, flower_share_configs(fl, group))
        for dst, ciphertext in zip(
            reply[key.DESTINATION_LIST], reply[key.CIPHERTEXT_LIST], strict=True
        ):
            group.forward[dst][0].append(nid)
            group.forward[dst][1].append(ciphertext)
    return group


def flower_collect(fl: Any, group: FlowerGroup, nid: int, parameters: Any, weight: int) -> Any:
    """One call of Flower's stage 2 for node ``nid``: its reply (masked parameters)."""
    srcs, ciphertexts = group.forward[nid]
    configs = fl.ConfigRecord({fl.Key.CIPHERTEXT_LIST: ciphertexts, fl.Key.SOURCE_LIST: srcs})
    return fl.mod._collect_masked_vectors(group.states[nid], configs, weight, parameters)


def flower_round_trip(
    fl: Any, deltas: Sequence[np.ndarray], weights: Sequence[int]
) -> tuple[np.ndarray, np.ndarray, float]:
    """Every node masks with Flower's client stage; the server side of its SecAggPlusWorkflow
    (``collect_masked_vectors_stage`` sum, ``unmask_stage``) is reproduced with Flower's own
    helpers: (Flower's weighted average, expected weighted average, error bound)."""
    members = len(deltas)
    key, ar = fl.Key, fl.arithmetic
    group = flower_group(fl, members, sa.default_threshold(members - 1))
    mod_range, target = FLOWER_DEFAULTS["mod_range"], FLOWER_DEFAULTS["target_range"]
    clipping = FLOWER_DEFAULTS["clipping_range"]
    masked_vector = None
    for nid in group.states:
        parameters = fl.ndarrays_to_parameters([deltas[nid - 1]])
        reply = flower_collect(fl, group, nid, parameters, weights[nid - 1])
        vector = [fl.bytes_to_ndarray(b) for b in reply[key.MASKED_PARAMETERS]]
        masked_vector = (
            vector if masked_vector is None else ar.parameters_addition(masked_vector, vector)
        )
    masked_vector = ar.parameters_mod(masked_vector, mod_range)
    active = list(group.states)
    collected: dict[int, list[bytes]] = {nid: [] for nid in active}
    for state in group.states.values():
        reply = fl.mod._unmask(
            state,
            fl.ConfigRecord({key.ACTIVE_NODE_ID_LIST: active, key.DEAD_NODE_ID_LIST: []}),
        )
        for owner, share in zip(reply[key.NODE_ID_LIST], reply[key.SHARE_LIST], strict=True):
            collected[owner].append(share)
    shapes = ar.get_parameters_shape(masked_vector)
    for share_list in collected.values():
        private_mask = fl.pseudo_rand_gen(fl.combine_shares(share_list), mod_range, shapes)
        masked_vector = ar.parameters_subtraction(masked_vector, private_mask)
    recon = ar.parameters_mod(masked_vector, mod_range)
    q_total_ratio, recon = ar.factor_extract(recon)
    aggregated = fl.quantization.dequantize(recon, clipping, target)[0]
    aggregated += -(members - 1) * clipping
    aggregated *= target / q_total_ratio
    # the client side: x * dq_ratio, dq_ratio = round(w / max_weight * target) / target
    ratios = [round(w / FLOWER_DEFAULTS["max_weight"] * target) / target for w in weights]
    expected = np.zeros(deltas[0].size, dtype=np.float64)
    for delta, ratio in zip(deltas, ratios, strict=True):
        expected += delta.astype(np.float64) * ratio
    expected /= sum(ratios)
    # stochastic rounding: under one quantum (2 * clipping / target) per node, float32 slack
    bound = members * (2 * clipping / target) / sum(ratios) * (1 + 1e-6) + 1e-7
    return np.asarray(aggregated, dtype=np.float64), expected, bound


def flower_seed_fold_collides(fl: Any) -> bool:
    """Two different 32-byte seeds whose 4-byte words XOR to the same 32-bit value: Flower's
    pseudo_rand_gen gives both the same mask (it seeds MT19937 with the fold)."""
    seed = bytearray(secrets.token_bytes(32))
    other = bytearray(seed)
    flip = secrets.token_bytes(4)
    for i in range(4):  # the same 4 bytes XORed into words 0 and 1 cancel in the fold
        other[i] ^= flip[i]
        other[4 + i] ^= flip[i]
    if other == seed:
        return flower_seed_fold_collides(fl)
    a = fl.pseudo_rand_gen(bytes(seed), FLOWER_DEFAULTS["mod_range"], [(1000,)])[0]
    b = fl.pseudo_rand_gen(bytes(other), FLOWER_DEFAULTS["mod_range"], [(1000,)])[0]
    return bool(np.array_equal(a, b))


# --------------------------------------------------------------------------- measuring


def median_interleaved(
    calls: dict[str, Callable[[], Any] | None], repeat: int, tag: str
) -> dict[str, float | None]:
    """One untimed warm-up call of each, then ``repeat`` rounds of timed calls, interleaved."""
    runs: dict[str, list[float]] = {name: [] for name in calls}
    for i in range(repeat + 1):
        for name, call in calls.items():
            if call is None:
                continue
            seconds, result = timed(call)
            del result
            if i:
                runs[name].append(seconds)
        if i:
            shown = ", ".join(f"{n} {runs[n][-1] * 1e3:.1f} ms" for n in calls if runs[n])
            progress(f"{tag} run {i}/{repeat}: {shown}")
    return {name: statistics.median(t) if t else None for name, t in runs.items()}


@dataclass
class Bench:
    args: argparse.Namespace
    fl: Any
    problems: list[str] = field(default_factory=list)
    rows: list[dict[str, Any]] = field(default_factory=list)

    def emit(self, row: dict[str, Any]) -> None:
        self.rows.append(row)
        if self.args.json:
            print(json.dumps(row), flush=True)

    def check(self, row: dict[str, Any]) -> None:
        self.emit(row)
        if not row["ok"]:
            message = f"{row['implementation']} k={row['neighbours']}: unmasked sum is wrong"
            progress(f"ERROR: {message} ({row})")
            self.problems.append(message)

    # -- 0. the PRGs alone

    def prg(self) -> None:
        params, fl = self.args.params, self.fl
        seed = secrets.token_bytes(32)
        calls: dict[str, Callable[[], Any] | None] = {
            "flportal": lambda: sa.prg_uint32(seed, params + 1),
            "flower": None
            if fl is None
            else lambda: fl.pseudo_rand_gen(seed, FLOWER_DEFAULTS["mod_range"], [(params,), ()]),
        }
        times = median_interleaved(calls, self.args.repeat, "[prg]")
        self.emit(
            {
                "kind": "prg",
                "params": params,
                "flportal_seconds": times["flportal"],
                "flower_seconds": times["flower"],
                "flportal_prg": "AES-256-CTR, 32-byte key (HKDF-SHA256 of X25519)",
                "flower_prg": "numpy RandomState (MT19937), seed folded to 32 bits",
                "flower_seed_fold_collision": None if fl is None else flower_seed_fold_collides(fl),
            }
        )

    # -- 1 + 2. one merchant's client stages, and the round-trip checks

    def client(self, k: int) -> None:
        args, fl = self.args, self.fl
        tag = f"[client k={k}]"
        members = k + 1  # the merchant and its k neighbours, all neighbours of each other
        deltas, weights = make_inputs(members, args.params, args.seed + k)

        progress(f"{tag} checking the flportal round trip ({members} members)...")
        weighted, weight, expected, bound = flportal_round_trip(deltas, weights, k)
        # on the weighted mean, as Flower's result is: comparable errors
        error = float(np.max(np.abs(weighted / weight - expected / sum(weights))))
        bound /= sum(weights)
        self.check(
            {
                "kind": "check",
                "implementation": "flportal",
                "neighbours": k,
                "members": members,
                "params": args.params,
                "max_abs_error": error,
                "bound": bound,
                "ok": error <= bound and weight == sum(weights),
            }
        )
        if fl is not None:
            progress(f"{tag} checking the Flower round trip ({members} members)...")
            aggregated, expected, bound = flower_round_trip(fl, deltas, weights)
            error = float(np.max(np.abs(aggregated - expected)))
            self.check(
                {
                    "kind": "check",
                    "implementation": "flower",
                    "neighbours": k,
                    "members": members,
                    "params": args.params,
                    "max_abs_error": error,
                    "bound": bound,
                    "ok": error <= bound,
                }
            )
        free()

        # the timed merchant sits in the middle: half its pairwise masks added, half subtracted
        me = k // 2 + 1
        delta, weight = deltas[me - 1], weights[me - 1]
        group = flportal_group(members, k, participants=args.members)
        session, neighbours = group.sessions[me], group.neighbours(me)
        inbox = group.inbox[me]

        def ours_mask() -> bytes:
            session.open_shares(neighbours, inbox)
            masked = session.masked_input(
                neighbours, delta, weight=weight, quantizer=group.quantizer
            )
            return codec.encode({"masked": masked})

        def ours_share() -> dict:
            return session.share_bundles(neighbours, group.threshold)

        flower_mask = flower_share = None
        flower_bytes: int | None = None
        flower_dtype: str | None = None
        if fl is not None:
            fgroup = flower_group(fl, members, group.threshold)
            parameters = fl.ndarrays_to_parameters([delta])

            def flower_mask() -> Any:
                return flower_collect(fl, fgroup, me, parameters, weight)

            share_configs = flower_share_configs(fl, fgroup)
            spare = [copy.deepcopy(fgroup.states[me]) for _ in range(args.repeat + 1)]

            def flower_share() -> Any:  # _share_keys rewrites its state: a fresh copy each run
                return fl.mod._share_keys(spare.pop(), share_configs)

            reply = flower_mask()[fl.Key.MASKED_PARAMETERS]
            flower_bytes = sum(len(b) for b in reply)
            flower_dtype = str(fl.bytes_to_ndarray(reply[-1]).dtype)
        ours_bytes = len(ours_mask())

        progress(f"{tag} timing the masking stage...")
        mask_times = median_interleaved(
            {"flportal": ours_mask, "flower": flower_mask}, args.repeat, f"{tag} mask"
        )
        progress(f"{tag} timing the share stage...")
        share_times = median_interleaved(
            {"flportal": ours_share, "flower": flower_share}, args.repeat, f"{tag} share"
        )
        ours, theirs = mask_times["flportal"], mask_times["flower"]
        ratio = None if theirs is None else ours / theirs
        self.emit(
            {
                "kind": "client",
                "neighbours": k,
                "params": args.params,
                "flportal_seconds": ours,
                "flower_seconds": theirs,
                "ratio": ratio,
                "flportal_bytes_per_param": ours_bytes / args.params,
                "flower_bytes_per_param": None
                if flower_bytes is None
                else flower_bytes / args.params,
                "flower_dtype": flower_dtype,
                "share_flportal_seconds": share_times["flportal"],
                "share_flower_seconds": share_times["flower"],
                "target": TARGET,
                "met": None if ratio is None else ratio <= 1.0,
            }
        )
        free()

    # -- 3. the server's unmasking with dropped merchants

    def unmask(self, k: int) -> None:
        args = self.args
        n = args.members
        tag = f"[unmask k={k}]"
        progress(f"{tag} {n} members share keys and mask {args.params} params each...")
        deltas, weights = make_inputs(n, args.params, args.seed + 1000 + k)
        group = flportal_group(n, k)
        masked = flportal_mask_all(group, deltas, weights)
        encoded = {
            u: group.quantizer.encode(deltas[u - 1], weight=weights[u - 1]) for u in group.sessions
        }
        del deltas
        free()
        for d in args.dropped:
            dropped = choose_dropped(group, d, args.seed + d)
            if dropped is None:
                progress(f"{tag} cannot drop {d} of {n} and keep every threshold; skipped")
                continue
            shares = flportal_reveal(group, dropped)
            survivors = [u for u in sorted(group.sessions) if u not in dropped]
            expected = np.zeros_like(encoded[survivors[0]])
            for u in survivors:
                expected += encoded[u]
            runs: list[Unmasked] = []
            decode_times: list[float] = []
            exact = True
            for i in range(args.repeat + 1):
                result = flportal_unmask(group, masked, shares, dropped)
                exact = exact and bool(np.array_equal(result.total, expected))
                seconds, _ = timed(lambda total=result.total: group.quantizer.decode(total))
                if i:
                    runs.append(result)
                    decode_times.append(seconds)
                del result
            summed = statistics.median(r.sum_seconds for r in runs)
            self_unmask = statistics.median(r.self_unmask_seconds for r in runs)
            decode = statistics.median(decode_times)
            dropped_seconds = statistics.median(r.dropped_seconds for r in runs)
            row = {
                "kind": "unmask",
                "neighbours": k,
                "members": n,
                "dropped": d,
                "params": args.params,
                "threshold": group.threshold,
                "sum_seconds": summed,
                "self_unmask_seconds": self_unmask,
                "decode_seconds": decode,
                "fixed_seconds": summed + self_unmask + decode,
                "dropped_seconds": dropped_seconds,
                "per_dropped_seconds": dropped_seconds / d if d else None,
                "exact": exact,
            }
            progress(
                f"{tag} d={d}: fixed {row['fixed_seconds'] * 1e3:.1f} ms, dropped "
                f"{dropped_seconds * 1e3:.1f} ms, exact {exact}"
            )
            self.emit(row)
            if not exact:
                message = f"unmask k={k} d={d}: total differs from the survivors' inputs"
                progress(f"ERROR: {message}")
                self.problems.append(message)
            runs.clear()
            free()


def choose_dropped(group: Group, d: int, seed: int) -> frozenset[int] | None:
    """``d`` members whose dropping leaves every member at least ``threshold`` surviving
    share holders (its neighbours and itself), chosen greedily in a seeded order."""
    order = sorted(group.sessions)
    np.random.default_rng(seed).shuffle(order)
    chosen: set[int] = set()
    for u in order:
        if len(chosen) == d:
            break
        trial = chosen | {u}
        if all(
            sum(1 for h in [*group.graph[v], v] if h not in trial) >= group.threshold
            for v in group.sessions
        ):
            chosen = trial
    return frozenset(chosen) if len(chosen) == d else None


# --------------------------------------------------------------------------- output


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1e3:.1f}"


def _render(header: list[str], lines: list[list[str]]) -> list[str]:
    widths = [max(len(row[i]) for row in [header, *lines]) for i in range(len(header))]
    out = ["  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)).rstrip()]
    out.append("  ".join("-" * w for w in widths))
    for line in lines:
        out.append("  ".join(c.rjust(w) for c, w in zip(line, widths, strict=True)).rstrip())
    return out


def table(rows: Sequence[dict[str, Any]], flower_info: str) -> str:
    text: list[str] = []
    client = [r for r in rows if r["kind"] == "client"]
    if client:
        params = client[0]["params"]
        text.append(
            f"Client masking, one merchant, {params:,} float32 params "
            f"(medians, ms; Flower: {flower_info})"
        )
        text += _render(
            [
                "k",
                "flportal mask",
                "Flower mask",
                "flportal/Flower",
                "met?",
                "B/param ours",
                "B/param Flower",
                "share ours",
                "share Flower",
            ],
            [
                [
                    str(r["neighbours"]),
                    _ms(r["flportal_seconds"]),
                    _ms(r["flower_seconds"]),
                    "-" if r["ratio"] is None else f"{r['ratio']:.2f}",
                    {True: "yes", False: "NO", None: "-"}[r["met"]],
                    f"{r['flportal_bytes_per_param']:.3f}",
                    "-"
                    if r["flower_bytes_per_param"] is None
                    else f"{r['flower_bytes_per_param']:.3f} ({r['flower_dtype']})",
                    _ms(r["share_flportal_seconds"]),
                    _ms(r["share_flower_seconds"]),
                ]
                for r in client
            ],
        )
        text.append(
            "mask: flportal open_shares + masked_input + safetensors encode; Flower "
            "_collect_masked_vectors (secaggplus_mod.py stage 2, ndarray_to_bytes included)."
        )
        text.append(f"target (SPEC 10): {TARGET}, 4 bytes per parameter on the wire.")
    prg = [r for r in rows if r["kind"] == "prg"]
    if prg:
        r = prg[0]
        text.append("")
        text.append(
            f"PRG, {r['params']:,} words: flportal {r['flportal_prg']}: "
            f"{_ms(r['flportal_seconds'])} ms; Flower {r['flower_prg']}: "
            f"{_ms(r['flower_seconds'])} ms"
        )
        if r["flower_seed_fold_collision"] is not None:
            text.append(
                "Flower pseudo_rand_gen (flwr/common/secure_aggregation/secaggplus_utils.py): "
                "two different 32-byte seeds with the same XOR fold give the same mask: "
                f"{r['flower_seed_fold_collision']}"
            )
    checks = [r for r in rows if r["kind"] == "check"]
    if checks:
        text.append("")
        text.append(
            "Round trips (k + 1 members, all neighbours; mask, sum, unmask, decode), "
            "error of the weighted mean:"
        )
        for r in checks:
            text.append(
                f"  {r['implementation']:<8} k={r['neighbours']:<3} max abs error "
                f"{r['max_abs_error']:.3g} (bound {r['bound']:.3g}): "
                f"{'ok' if r['ok'] else 'WRONG'}"
            )
    unmask = [r for r in rows if r["kind"] == "unmask"]
    if unmask:
        r0 = unmask[0]
        text.append("")
        text.append(
            f"Server unmasking, {r0['members']} members, {r0['params']:,} params, "
            "d dropped after sharing keys (medians, ms)"
        )
        text += _render(
            [
                "k",
                "t",
                "d",
                "sum",
                "self-unmask",
                "decode",
                "fixed",
                "dropped total",
                "per dropped",
                "exact?",
            ],
            [
                [
                    str(r["neighbours"]),
                    str(r["threshold"]),
                    str(r["dropped"]),
                    _ms(r["sum_seconds"]),
                    _ms(r["self_unmask_seconds"]),
                    _ms(r["decode_seconds"]),
                    _ms(r["fixed_seconds"]),
                    _ms(r["dropped_seconds"]),
                    _ms(r["per_dropped_seconds"]),
                    "yes" if r["exact"] else "NO",
                ]
                for r in unmask
            ],
        )
        text.append(
            "fixed = sum of the n - d masked vectors + Shamir rebuild and removal of each "
            "survivor's self mask + decode; per dropped = Shamir rebuild of its mask key + "
            "removal of the pairwise masks its surviving neighbours added."
        )
    return "\n".join(text)


# --------------------------------------------------------------------------- main


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.secagg",
        description="Secure aggregation: client masking vs Flower SecAgg+, server unmasking.",
    )
    parser.add_argument("--params", type=int, default=1_000_000, help="model parameters")
    parser.add_argument(
        "--neighbours", type=int, nargs="+", default=[4, 8, 16], help="k values (even, >= 2)"
    )
    parser.add_argument("--members", type=int, default=20, help="members n for unmasking")
    parser.add_argument(
        "--dropped", type=int, nargs="+", default=[0, 1, 2, 4], help="dropped merchants d"
    )
    parser.add_argument("--repeat", type=int, default=5, help="timed runs (median)")
    parser.add_argument("--json", action="store_true", help="one JSON object per row on stdout")
    parser.add_argument("--no-flower", action="store_true", help="do not measure Flower")
    parser.add_argument("--no-unmask", action="store_true", help="skip the server part")
    parser.add_argument("--seed", type=int, default=SEED, help="seed of the synthetic inputs")
    args = parser.parse_args(argv)
    if args.repeat < 1:
        parser.error("--repeat must be at least 1")
    if args.params < 1:
        parser.error("--params must be at least 1")
    if any(k < 2 or k % 2 for k in args.neighbours):
        parser.error("--neighbours must be even and >= 2 (SecAgg+ ring of k/2 each side)")
    if args.members < 3 or any(d < 0 or d >= args.members for d in args.dropped):
        parser.error("--members must be >= 3 and every --dropped in [0, members)")
    if args.members * MAX_WEIGHT > 2**31 - 1:
        parser.error("--members * max_weight must stay below 2^31")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    fl, flower_info = load_flower(args.no_flower)
    progress(
        f"numpy {np.__version__}, Python {platform.python_version()}, {platform.machine()}; "
        f"Flower: {flower_info}; params {args.params:,}, k {args.neighbours}, "
        f"repeat {args.repeat}"
    )
    bench = Bench(args, fl)
    bench.prg()
    for k in args.neighbours:
        bench.client(k)
    if not args.no_unmask:
        for k in args.neighbours:
            if k >= args.members - 1:
                progress(f"[unmask k={k}] k >= members - 1: skipped")
                continue
            bench.unmask(k)
    output = table(bench.rows, flower_info)
    print(output, file=sys.stderr if args.json else sys.stdout, flush=True)
    for problem in bench.problems:
        progress(f"ERROR: {problem}")
    return 1 if bench.problems else 0


if __name__ == "__main__":
    sys.exit(main())
