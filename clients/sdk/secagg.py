"""Secure aggregation: the cryptographic core shared by the SDK (masking) and the server
(unmasking). Bonawitz et al. 2017, "Practical Secure Aggregation for Privacy-Preserving Machine
Learning", with the sparse neighbour graph of SecAgg+ (Bell et al. 2020). No Django, no I/O.

Per round, merchant ``u`` (index ``u`` in 1..n):

- owns a long-term X25519 key ``c`` registered with the portal (share encryption), and makes an
  ephemeral X25519 key ``s`` and a random 32-byte self-mask seed ``b``;
- agrees a pairwise mask seed with every neighbour ``v``: ``s_uv = HKDF(X25519(s_u, s_v))``;
- Shamir-shares ``b_u`` and ``s_u`` (threshold t) among its neighbours and itself, each share
  sealed with ChaCha20-Poly1305 under ``HKDF(X25519(c_u, c_v))`` and bound to the round, sender
  and recipient (a share replayed into another round or to another recipient fails to open);
- uploads ``y_u = q(x_u) + PRG(b_u) + sum_{v>u} PRG(s_uv) - sum_{v<u} PRG(s_uv)  (mod 2^32)``,
  4 bytes per parameter, where ``q`` is fixed-point quantization of its weighted change and
  PRG is AES-256-CTR keyed by the seed;
- in unmasking reveals, for each neighbour, the share of ``b`` (neighbour survived) or of ``s``
  (neighbour dropped), never both.

The server adds the y's, rebuilds each survivor's ``b`` and each dropped merchant's ``s`` from t
shares, removes the self masks and the pairwise masks that survivors added towards dropped
merchants, and decodes the sum. It never sees an individual unmasked update.
"""

from __future__ import annotations

import base64
import hashlib
import math
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

KEY_BYTES = 32
SEED_BYTES = 32
FIELD_PRIME = 2**521 - 1  # a Mersenne prime: a 32-byte secret is one field element
FIELD_BYTES = 66
MODULUS_BITS = 32
_INT32_MAX = 2**31 - 1
SHARE_PLAINTEXT_BYTES = 2 + 2 * FIELD_BYTES


class SecAggError(ValueError):
    """A secure-aggregation message or parameter is invalid; ``code`` says which."""

    def __init__(self, message: str, *, code: str = "secagg_invalid") -> None:
        super().__init__(message)
        self.code = code


# -- keys ------------------------------------------------------------------------------------


def generate_keypair() -> tuple[bytes, bytes]:
    """A fresh X25519 key pair as raw bytes: (private, public)."""
    private = X25519PrivateKey.generate()
    return (
        private.private_bytes(
            serialization.Encoding.Raw,
            serialization.PrivateFormat.Raw,
            serialization.NoEncryption(),
        ),
        public_key_of(private),
    )


def public_key_of(private: X25519PrivateKey | bytes) -> bytes:
    if isinstance(private, bytes):
        private = _private(private)
    return private.public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )


def check_public_key(raw: bytes) -> bytes:
    """A 32-byte X25519 public key that is not a low-order point, or SecAggError."""
    if len(raw) != KEY_BYTES:
        raise SecAggError("An X25519 public key is 32 bytes.", code="invalid_public_key")
    try:
        X25519PrivateKey.generate().exchange(X25519PublicKey.from_public_bytes(raw))
    except ValueError as exc:  # all-zero shared secret: a low-order point
        raise SecAggError("Not a usable X25519 public key.", code="invalid_public_key") from exc
    return raw


def agree(private: bytes, peer_public: bytes, *, info: bytes) -> bytes:
    """X25519 then HKDF-SHA256: a 32-byte key both sides derive, bound to ``info``."""
    try:
        shared = _private(private).exchange(X25519PublicKey.from_public_bytes(peer_public))
    except ValueError as exc:
        raise SecAggError("Key agreement failed.", code="invalid_public_key") from exc
    return HKDF(algorithm=hashes.SHA256(), length=KEY_BYTES, salt=None, info=info).derive(shared)


def _private(raw: bytes) -> X25519PrivateKey:
    if len(raw) != KEY_BYTES:
        raise SecAggError("An X25519 private key is 32 bytes.", code="invalid_private_key")
    return X25519PrivateKey.from_private_bytes(raw)


def mask_info(context: bytes, u: int, v: int) -> bytes:
    low, high = sorted((u, v))
    return b"flportal/secagg/mask|" + context + b"|%d|%d" % (low, high)


def share_info(context: bytes, sender: int, recipient: int) -> bytes:
    return b"flportal/secagg/share|" + context + b"|%d>%d" % (sender, recipient)


# -- the pseudo-random generator -----------------------------------------------------------


def prg_uint32(seed: bytes, size: int) -> np.ndarray:
    """``size`` uint32 words of AES-256-CTR keystream under ``seed`` (a cryptographic PRG)."""
    if len(seed) != SEED_BYTES:
        raise SecAggError("A mask seed is 32 bytes.", code="invalid_seed")
    nbytes = 4 * size
    raw = np.zeros(nbytes + 16, dtype=np.uint8)  # update_into wants one block of headroom
    encryptor = Cipher(algorithms.AES(seed), modes.CTR(bytes(16))).encryptor()
    encryptor.update_into(memoryview(raw)[:nbytes], raw)  # keystream XOR zeros, in place
    return raw[:nbytes].view("<u4")


# -- fixed-point quantization mod 2^32 ------------------------------------------------------


@dataclass(frozen=True)
class Quantizer:
    """Fixed point for a sum of up to ``participants`` vectors, each entry clipped to
    [-clip_range, clip_range] and multiplied by an integer weight <= ``max_weight``, so that
    the sum never wraps in signed 32-bit arithmetic. The weight itself travels as the last
    word (an exact integer). Rounding error per entry of the *sum* is at most participants/2
    units of 1/scale."""

    clip_range: float
    max_weight: int
    participants: int

    def __post_init__(self) -> None:
        if not (math.isfinite(self.clip_range) and self.clip_range > 0):
            raise SecAggError("clip_range must be positive.", code="invalid_secagg")
        if self.max_weight < 1 or self.participants < 1:
            raise SecAggError("max_weight and participants must be >= 1.", code="invalid_secagg")
        if self.participants * self.max_weight > _INT32_MAX:
            raise SecAggError(
                "participants * max_weight must stay below 2^31.", code="invalid_secagg"
            )

    @property
    def scale(self) -> float:
        return (_INT32_MAX - self.participants) / (
            self.participants * self.max_weight * self.clip_range
        )

    def encode(self, values: np.ndarray, *, weight: int) -> np.ndarray:
        """uint32 words: round(clip(values) * weight * scale) mod 2^32, then the weight."""
        if not 1 <= weight <= self.max_weight:
            raise SecAggError(
                f"weight must be within [1, {self.max_weight}].", code="invalid_weight"
            )
        flat = np.clip(np.asarray(values, np.float64).ravel(), -self.clip_range, self.clip_range)
        words = np.empty(flat.size + 1, dtype="<u4")
        fixed = np.rint(flat * (weight * self.scale)).astype(np.int64)
        words[:-1] = fixed.astype(np.uint32)  # two's complement wrap: mod 2^32
        words[-1] = weight
        return words

    def decode(self, total: np.ndarray) -> tuple[np.ndarray, int]:
        """(sum of weight * values, sum of weights) from the unmasked sum of encodings."""
        total = np.asarray(total, dtype="<u4")
        weighted = total[:-1].view(np.int32).astype(np.float64) / self.scale
        return weighted, int(total[-1])


# -- masking and unmasking ----------------------------------------------------------------


def mask(
    encoded: np.ndarray,
    *,
    index: int,
    self_seed: bytes,
    pairwise: Mapping[int, bytes],
) -> np.ndarray:
    """y = encoded + PRG(b) + sum_{v > index} PRG(s_uv) - sum_{v < index} PRG(s_uv) (mod 2^32)."""
    words = np.array(encoded, dtype="<u4", copy=True)
    words += prg_uint32(self_seed, words.size)
    for peer, seed in pairwise.items():
        if peer == index:
            raise SecAggError("A merchant is not its own neighbour.", code="invalid_graph")
        if peer > index:
            words += prg_uint32(seed, words.size)
        else:
            words -= prg_uint32(seed, words.size)
    return words


def remove_self_mask(total: np.ndarray, seed: bytes) -> None:
    total -= prg_uint32(seed, total.size)


def remove_pair_mask(total: np.ndarray, *, survivor: int, dropped: int, seed: bytes) -> None:
    """Undo the mask a survivor added towards a merchant who dropped before masking."""
    if survivor > dropped:
        total += prg_uint32(seed, total.size)  # the survivor had subtracted it
    else:
        total -= prg_uint32(seed, total.size)


# -- Shamir secret sharing over GF(2^521 - 1) ----------------------------------------------


def shamir_split(secret: bytes, *, xs: Sequence[int], threshold: int) -> dict[int, bytes]:
    """Shares of a 32-byte secret at the points ``xs``; any ``threshold`` of them rebuild it."""
    if len(secret) != SEED_BYTES:
        raise SecAggError("Shamir secrets here are 32 bytes.", code="invalid_secret")
    if not 1 <= threshold <= len(xs) or len(set(xs)) != len(xs) or min(xs, default=1) < 1:
        raise SecAggError("Need distinct points >= 1 and 1 <= t <= n.", code="invalid_threshold")
    coefficients = [int.from_bytes(secret, "big")] + [
        secrets.randbelow(FIELD_PRIME) for _ in range(threshold - 1)
    ]
    shares = {}
    for x in xs:
        y = 0
        for coefficient in reversed(coefficients):  # Horner
            y = (y * x + coefficient) % FIELD_PRIME
        shares[x] = y.to_bytes(FIELD_BYTES, "big")
    return shares


def shamir_combine(shares: Mapping[int, bytes]) -> bytes:
    """The secret (the polynomial at 0) from at least threshold shares, by Lagrange."""
    points = [(int(x), int.from_bytes(y, "big")) for x, y in shares.items()]
    if not points or any(y >= FIELD_PRIME or x < 1 for x, y in points):
        raise SecAggError("Invalid Shamir shares.", code="invalid_share")
    secret = 0
    for i, (xi, yi) in enumerate(points):
        numerator, denominator = 1, 1
        for j, (xj, _) in enumerate(points):
            if i != j:
                numerator = numerator * -xj % FIELD_PRIME
                denominator = denominator * (xi - xj) % FIELD_PRIME
        secret = (secret + yi * numerator * pow(denominator, -1, FIELD_PRIME)) % FIELD_PRIME
    if secret >= 2 ** (8 * SEED_BYTES):
        raise SecAggError("The shares do not agree on a secret.", code="invalid_share")
    return secret.to_bytes(SEED_BYTES, "big")


def pack_share(index: int, b_share: bytes, s_share: bytes) -> bytes:
    """A share bundle: the holder's x coordinate, then the shares of b and of s."""
    return index.to_bytes(2, "big") + b_share + s_share


def unpack_share(plaintext: bytes) -> tuple[int, bytes, bytes]:
    if len(plaintext) != SHARE_PLAINTEXT_BYTES:
        raise SecAggError("A share bundle has the wrong length.", code="invalid_share")
    index = int.from_bytes(plaintext[:2], "big")
    return index, plaintext[2 : 2 + FIELD_BYTES], plaintext[2 + FIELD_BYTES :]


# -- authenticated encryption of shares ---------------------------------------------------


def seal(key: bytes, plaintext: bytes, *, associated: bytes) -> bytes:
    nonce = secrets.token_bytes(12)
    return nonce + ChaCha20Poly1305(key).encrypt(nonce, plaintext, associated)


def unseal(key: bytes, sealed: bytes, *, associated: bytes) -> bytes:
    if len(sealed) < 12 + 16:
        raise SecAggError("A sealed share is too short.", code="share_tampered")
    try:
        return ChaCha20Poly1305(key).decrypt(sealed[:12], sealed[12:], associated)
    except InvalidTag as exc:
        raise SecAggError(
            "A share failed authentication: tampered, replayed or misaddressed.",
            code="share_tampered",
        ) from exc


# -- the SecAgg+ neighbour graph ------------------------------------------------------------


def neighbour_graph(
    indices: Sequence[int], *, neighbours: int, seed: bytes
) -> dict[int, list[int]]:
    """Each index's neighbours: on a ring in an order shuffled by ``seed``, the ``k/2`` before
    and after it (a Harary graph, as SecAgg+ uses); the complete graph when k >= n - 1."""
    ordered = sorted(set(indices))
    n = len(ordered)
    if n != len(indices):
        raise SecAggError("Indices must be distinct.", code="invalid_graph")
    if neighbours >= n - 1:
        return {u: [v for v in ordered if v != u] for u in ordered}
    if neighbours < 2 or neighbours % 2:
        raise SecAggError("neighbours must be even and >= 2.", code="invalid_graph")
    keyed = sorted(ordered, key=lambda u: hashlib.sha256(seed + u.to_bytes(4, "big")).digest())
    half = neighbours // 2
    graph: dict[int, list[int]] = {}
    for position, u in enumerate(keyed):
        near = {keyed[(position + step) % n] for step in range(-half, half + 1) if step}
        graph[u] = sorted(near)
    return graph


def default_threshold(neighbours: int) -> int:
    """More than half of a merchant's share holders (its neighbours and itself)."""
    return (neighbours + 1) // 2 + 1


# -- one merchant's side of one round -------------------------------------------------------


class MemberSession:
    """What a merchant computes in each phase of one round. Holds this round's mask key and
    self-mask seed in memory only; the long-term identity key comes from the key file."""

    def __init__(self, identity: bytes, *, context: str, index: int) -> None:
        self.identity = identity
        self.identity_public = public_key_of(identity)
        self.context = context.encode()
        self.index = index
        self.s_private, self.s_public = generate_keypair()
        self.self_seed = secrets.token_bytes(SEED_BYTES)
        self.received: dict[int, tuple[bytes, bytes]] = {}

    def share_bundles(self, neighbours: Sequence[Mapping[str, str]], threshold: int) -> dict:
        """One sealed bundle (shares of b and s) for each holder: the neighbours and me."""
        holders = {int(n["index"]): _b64decode(n["c_public_key"]) for n in neighbours}
        holders[self.index] = self.identity_public
        xs = sorted(holders)
        b_shares = shamir_split(self.self_seed, xs=xs, threshold=threshold)
        s_shares = shamir_split(self.s_private, xs=xs, threshold=threshold)
        sealed = {}
        for holder in xs:
            info = share_info(self.context, self.index, holder)
            key = agree(self.identity, holders[holder], info=info)
            bundle = pack_share(holder, b_shares[holder], s_shares[holder])
            sealed[holder] = seal(key, bundle, associated=info)
        return sealed

    def open_shares(
        self, neighbours: Sequence[Mapping[str, str]], shares: Sequence[Mapping[str, str]]
    ) -> None:
        """Open and keep the bundles sent to me; any tampered or replayed one raises."""
        publics = {int(n["index"]): _b64decode(n["c_public_key"]) for n in neighbours}
        publics[self.index] = self.identity_public
        for item in shares:
            sender = int(item["sender"])
            if sender not in publics:
                raise SecAggError(f"A share from a non-neighbour #{sender}.", code="share_tampered")
            info = share_info(self.context, sender, self.index)
            key = agree(self.identity, publics[sender], info=info)
            holder, b_share, s_share = unpack_share(
                unseal(key, _b64decode(item["sealed"]), associated=info)
            )
            if holder != self.index:
                raise SecAggError("A share addressed to another holder.", code="share_tampered")
            self.received[sender] = (b_share, s_share)

    def masked_input(
        self,
        neighbours: Sequence[Mapping[str, str]],
        delta: np.ndarray,
        *,
        weight: int,
        quantizer: Quantizer,
    ) -> np.ndarray:
        """My quantized, weighted change under my self mask and one pairwise mask per
        neighbour that shared its keys."""
        pairwise = {
            int(n["index"]): agree(
                self.s_private,
                _b64decode(n["s_public_key"]),
                info=mask_info(self.context, self.index, int(n["index"])),
            )
            for n in neighbours
        }
        return mask(
            quantizer.encode(delta, weight=weight),
            index=self.index,
            self_seed=self.self_seed,
            pairwise=pairwise,
        )

    def reveal(self, neighbours: Sequence[Mapping[str, object]], threshold: int) -> dict:
        """Per neighbour that shared with me: its b share if it survived, else its s share.
        Refuses when fewer than ``threshold`` members survived (the sum would be too small to
        hide anyone)."""
        survived = {int(n["index"]): bool(n["survived"]) for n in neighbours}
        survived[self.index] = True
        if sum(survived.values()) < threshold:
            raise SecAggError(
                "Fewer than threshold members survived; refusing to unmask.",
                code="too_few_survivors",
            )
        revealed = {}
        for sender, (b_share, s_share) in self.received.items():
            if sender not in survived:
                continue
            revealed[sender] = b_share if survived[sender] else s_share
        return revealed


def _b64decode(value: object) -> bytes:
    return base64.b64decode(str(value), validate=True)


def flatten_delta(
    weights: Mapping[str, np.ndarray], base: Mapping[str, np.ndarray], names: Sequence[str]
) -> np.ndarray:
    """The change to the global model as one float64 vector, tensors in ``names`` order."""
    parts = [
        (np.asarray(weights[n], np.float64) - np.asarray(base[n], np.float64)).ravel()
        for n in names
    ]
    return np.concatenate(parts) if parts else np.zeros(0)


def l2_clip(delta: np.ndarray, max_norm: float) -> tuple[np.ndarray, float]:
    """The change scaled down to L2 norm ``max_norm`` (DP-FedAvg's client-side clipping)."""
    norm = float(np.linalg.norm(delta))
    if norm > max_norm > 0:
        return delta * (max_norm / norm), norm
    return delta, norm
