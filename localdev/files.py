"""Files only we may read: private directories, and files replaced in one step."""

from __future__ import annotations

import os
from pathlib import Path


def private_dir(path: Path) -> None:
    """`path` (and its missing parents) as a directory only we can enter (700)."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(path, 0o700)


def replace_file(path: Path, text: str) -> None:
    """Write `path` (readable by us only) in one step: a node starting meanwhile reads the old or the new."""
    temporary = path.with_name(path.name + ".new")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w") as file:
        file.write(text)
    os.replace(temporary, path)
