"""Certificates made for one run (a CA and a certificate per component), with the openssl command.

Only for local runs and tests: the files go into the run's data directory (mode 700), every file readable
by us alone (600).
Every certificate names 127.0.0.1 and localhost, so hostname checking works over loopback.
"""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

DAYS = "30"


@dataclass(frozen=True)
class Identity:
    cert: Path
    key: Path


def _openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, umask=0o077)


def _private_key(path: Path) -> None:
    _openssl("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", str(path))
    os.chmod(path, 0o600)


def make_ca(directory: Path, name: str = "profilemesh local CA") -> Identity:
    """A self-signed CA in `directory` (reused if it is there)."""
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(directory, 0o700)
    ca = Identity(directory / "ca.crt", directory / "ca.key")
    if not ca.cert.exists():
        _private_key(ca.key)
        _openssl(
            "req", "-x509", "-new", "-key", str(ca.key), "-out", str(ca.cert), "-days", DAYS, "-subj", f"/CN={name}",
            "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign",
        )  # fmt: skip
    return ca


def issue(ca: Identity, directory: Path, name: str) -> Identity:
    """A certificate for `name` (its subject CN and a DNS SAN), valid for server and client use on loopback."""
    identity = Identity(directory / f"{name}.crt", directory / f"{name}.key")
    if identity.cert.exists():
        return identity
    _private_key(identity.key)
    request = directory / f"{name}.csr"
    extensions = directory / f"{name}.ext"
    extensions.touch(mode=0o600)
    extensions.write_text(
        f"subjectAltName=DNS:{name},DNS:localhost,IP:127.0.0.1\n"
        "extendedKeyUsage=serverAuth,clientAuth\nbasicConstraints=CA:FALSE\n"
    )
    _openssl("req", "-new", "-key", str(identity.key), "-out", str(request), "-subj", f"/CN={name}")
    _openssl(
        "x509", "-req", "-in", str(request), "-CA", str(ca.cert), "-CAkey", str(ca.key), "-CAcreateserial",
        "-out", str(identity.cert), "-days", DAYS, "-extfile", str(extensions),
    )  # fmt: skip
    request.unlink()
    extensions.unlink()
    return identity


@dataclass(frozen=True)
class Authority:
    """A run's CA in `directory` and the certificates it signs there, each made the first time it is asked for."""

    directory: Path

    @property
    def ca_file(self) -> Path:
        return make_ca(self.directory).cert

    def identity(self, name: str) -> Identity:
        """A certificate and key for `name`, signed by the CA."""
        return issue(make_ca(self.directory), self.directory, name)
