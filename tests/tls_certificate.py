"""A self-signed TLS certificate for tests that run servers over real sockets.

Why: the gateway's, the trainer's and the shared server tests all need a certificate
for ``localhost``/``127.0.0.1``; the openssl CLI makes one in a fraction of a second
(the ``cryptography`` package is not a dependency of this project).
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest


def self_signed(folder: Path) -> tuple[Path, Path]:
    """Writes ``cert.pem`` and ``key.pem`` into ``folder``; skips the test without openssl.

    Returns:
        (certificate path, private key path); the certificate is its own CA.
    """
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        [
            "openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
            "-keyout", str(key), "-out", str(cert), "-subj", "/CN=localhost",
            "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1",
        ],
        check=True,
        capture_output=True,
    )
    return cert, key
