"""The local cluster's secrets: one password per ACL user, made on first use, each in a file only we can read."""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from localdev.files import private_dir


@dataclass(frozen=True)
class Passwords:
    """The passwords in `directory` (the cluster's data directory's `secrets/`, both kept at mode 700)."""

    directory: Path

    def file(self, user: str) -> Path:
        """The file holding `user`'s password, made (readable by us only) the first time it is asked for."""
        path = self.directory / f"{user}.password"
        if not path.exists():
            private_dir(self.directory.parent)
            private_dir(self.directory)
            descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(descriptor, "w") as file:
                file.write(secrets.token_urlsafe(32))
        return path

    def of(self, user: str) -> str:
        return self.file(user).read_text()
