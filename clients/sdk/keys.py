"""A merchant's long-term X25519 identity for secure aggregation, kept in a local file that
only its owner can read (created with mode 0600, refused if group or others can read it)."""

from __future__ import annotations

import base64
import os
import stat
from pathlib import Path

from clients.sdk.secagg import KEY_BYTES, generate_keypair, public_key_of


class KeyFileError(RuntimeError):
    pass


def load_or_create(path: str | Path) -> tuple[bytes, bytes]:
    """(private, public) from ``path``; a new key pair is written there if it does not exist."""
    path = Path(path).expanduser()
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        private, public = generate_keypair()
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(base64.b64encode(private).decode() + "\n")
        return private, public
    mode = path.stat().st_mode
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise KeyFileError(
            f"{path} is readable by others (mode {stat.S_IMODE(mode):o}); run chmod 600 {path}"
        )
    try:
        private = base64.b64decode(path.read_text().strip(), validate=True)
    except ValueError as exc:
        raise KeyFileError(f"{path} does not hold a base64 X25519 key") from exc
    if len(private) != KEY_BYTES:
        raise KeyFileError(f"{path} does not hold a 32-byte X25519 key")
    return private, public_key_of(private)
