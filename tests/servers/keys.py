"""SSH key material for the test servers: host keys, client keys, known_hosts files."""

from __future__ import annotations

from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey


def make_ed25519_key(path: Path, comment: str) -> str:
    """Write an unencrypted OpenSSH private key (0600) and ``path.pub``; return the public line."""
    key = Ed25519PrivateKey.generate()
    path.touch(mode=0o600)
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.OpenSSH,
            serialization.NoEncryption(),
        )
    )
    public = (
        key.public_key()
        .public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
        .decode()
    )
    line = f"{public} {comment}"
    path.with_name(path.name + ".pub").write_text(line + "\n")
    return line


def known_hosts_line(host: str, port: int, public_line: str) -> str:
    """OpenSSH's known_hosts entry; non-default ports are written as ``[host]:port``."""
    key_type, key_data = public_line.split()[:2]
    name = host if port == 22 else f"[{host}]:{port}"
    return f"{name} {key_type} {key_data}\n"
