"""Input limits (docs/architecture.md, the REST contract): checked before anything reaches the cluster."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

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


def check_limit(limit: int) -> int:
    if not 1 <= limit <= MAX_LIMIT:
        raise InvalidArgument(f"limit must be an integer from 1 to {MAX_LIMIT}, got {limit}", field="limit")
    return limit


def check_request(message: Any) -> None:
    """Check a request message's `user`, `fields` and `limit`, whichever it has, as its service would.

    The gateway runs this before calling, so bad input is answered 400 even while every replica of the
    service is down (a 503 would tell the client to retry what can never succeed). The services still
    check everything themselves: they are the authority for clients that call them directly.
    """
    names = message.DESCRIPTOR.fields_by_name
    if "user" in names:
        check_user(message.user)
    if "fields" in names:
        check_fields(message.fields)
    if "limit" in names:
        check_limit(message.limit)
