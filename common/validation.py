"""Input limits (docs/architecture.md, the REST contract): checked before anything reaches the cluster."""

from __future__ import annotations

import re
from collections.abc import Mapping

from common.errors import InvalidArgument

USER_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@+-]{0,127}")
FIELD_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
MAX_FIELDS = 64
MAX_VALUE_BYTES = 4096
MAX_USERS = 100  # the most users a WatchProfileEvents filter names
MAX_LIMIT = 1000  # the most profiles a top list (GetTopProfiles, WatchTopProfiles) returns


def _shown(text: str) -> str:
    """The offending input, cut short so an error message never echoes a huge value."""
    return repr(text if len(text) <= 40 else text[:40] + "...")


def check_user(user: str, field: str = "user") -> str:
    """`user`, if it is a valid user name; `field` is the request field it came from."""
    if not USER_PATTERN.fullmatch(user):
        raise InvalidArgument(
            f"user {_shown(user)} is invalid: use 1 to 128 of A-Z a-z 0-9 . _ @ + -, starting with a letter or digit",
            field=field,
        )
    return user


def check_fields(fields: Mapping[str, str]) -> dict[str, str]:
    if not fields:
        raise InvalidArgument("fields must not be empty: give at least one field", field="fields")
    if len(fields) > MAX_FIELDS:
        raise InvalidArgument(f"too many fields: {len(fields)}, at most {MAX_FIELDS}", field="fields")
    for name, value in fields.items():
        if not FIELD_PATTERN.fullmatch(name):
            raise InvalidArgument(
                f"field name {_shown(name)} is invalid: "
                "use 1 to 64 of A-Z a-z 0-9 _ . -, starting with a letter or digit",
                field="fields",
            )
        size = len(value.encode("utf-8"))
        if size > MAX_VALUE_BYTES:
            raise InvalidArgument(f"field {name!r} is {size} bytes, at most {MAX_VALUE_BYTES}", field=f"fields.{name}")
    return dict(fields)
