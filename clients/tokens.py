"""Pure helpers for merchant API tokens. No Django, no database.

A token looks like ``flp_<prefix>_<secret>``: a typed prefix that secret scanners recognise, an
8-character lookup prefix stored in clear (to find the row), and a 256-bit secret. Only an
HMAC-SHA256 of the whole token under a server key is stored; comparison is constant-time.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass

TOKEN_TYPE = "flp"  # noqa: S105 - the public type prefix, not a secret
PREFIX_LENGTH = 8
_ALPHABET = "abcdefghijklmnopqrstuvwxyz0123456789"
_TOKEN_RE = re.compile(rf"{TOKEN_TYPE}_([a-z0-9]{{{PREFIX_LENGTH}}})_([A-Za-z0-9_-]{{43}})")


@dataclass(frozen=True)
class GeneratedToken:
    plaintext: str  # shown once, never stored
    prefix: str
    hashed: str


def generate(key: str) -> GeneratedToken:
    prefix = "".join(secrets.choice(_ALPHABET) for _ in range(PREFIX_LENGTH))
    plaintext = f"{TOKEN_TYPE}_{prefix}_{secrets.token_urlsafe(32)}"
    return GeneratedToken(plaintext=plaintext, prefix=prefix, hashed=hash_token(plaintext, key))


def hash_token(plaintext: str, key: str) -> str:
    return hmac.new(key.encode(), plaintext.encode(), hashlib.sha256).hexdigest()


def parse_prefix(plaintext: str) -> str | None:
    """The lookup prefix of a well-formed token, or None for anything else."""
    match = _TOKEN_RE.fullmatch(plaintext)
    return match.group(1) if match else None


def matches(plaintext: str, hashed: str, key: str) -> bool:
    return hmac.compare_digest(hash_token(plaintext, key), hashed)
