"""The history format the recorder writes and the checker reads: one JSON object per line, one `Op` each.

An operation's `result` says whether it ran; its `outcome` says what it did when it ran, because a
NOT_FOUND or ALREADY_EXISTS answer is information the model must reproduce, not an error:

| result    | meaning                                                       | outcome                      |
| --------- | ------------------------------------------------------------- | ---------------------------- |
| `ok`      | the client got an answer: the operation ran once              | `done`, `exists`, `not_found`|
| `fail`    | proven not to have run (INVALID_ARGUMENT, refused before it)   | None                         |
| `unknown` | may have run at any time after `invoke_s`, or never (deadline, | None                         |
|           | UNAVAILABLE with OUTCOME_UNKNOWN, a lost connection)           |                              |

`done`: create/update wrote its fields, delete removed the profile, read found it (`value` = the whole
hash). `exists`: a create found the profile there. `not_found`: update, delete or read found none (a
read's `value` is then None).
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

KINDS = ("create", "update", "delete", "read")
RESULTS = ("ok", "fail", "unknown")
OUTCOMES = ("done", "exists", "not_found")
VIAS = ("grpc", "rest")
# Which outcomes each kind can have when it ran.
_OUTCOMES_OF = {"create": ("done", "exists"), "update": ("done", "not_found"), "delete": ("done", "not_found")}
_OUTCOMES_OF["read"] = ("done", "not_found")


class HistoryError(ValueError):
    """A record that is not a valid `Op`; the message names the field (and the line when loading)."""


@dataclass(frozen=True)
class Op:
    """One client operation on one profile (`key` is the user), as the client saw it.

    `value`: the fields a create/update wrote, or the fields a read returned (None: NOT_FOUND; None
    for delete). `complete_s` is None when the client never got an answer (result `unknown`).
    """

    process: int
    key: str
    f: str
    value: dict[str, str] | None
    invoke_s: float
    complete_s: float | None
    result: str
    via: str = "grpc"
    outcome: str | None = None
    error: str | None = None  # what the client got instead of an answer (status, reason), for the reader

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise HistoryError naming the first field that does not fit the format."""
        if self.f not in KINDS:
            raise HistoryError(f"f must be one of {KINDS}, got {self.f!r}")
        if self.result not in RESULTS:
            raise HistoryError(f"result must be one of {RESULTS}, got {self.result!r}")
        if self.via not in VIAS:
            raise HistoryError(f"via must be one of {VIAS}, got {self.via!r}")
        if not isinstance(self.key, str) or not self.key:
            raise HistoryError("key must be a non-empty string")
        if not math.isfinite(self.invoke_s):
            raise HistoryError("invoke_s must be a finite number")
        if self.complete_s is not None and self.complete_s < self.invoke_s:
            raise HistoryError(f"complete_s ({self.complete_s}) is before invoke_s ({self.invoke_s})")
        if self.value is not None and not (
            isinstance(self.value, dict)
            and all(isinstance(k, str) and isinstance(v, str) for k, v in self.value.items())
        ):
            raise HistoryError("value must be an object of string fields, or null")
        if self.result == "ok":
            if self.complete_s is None:
                raise HistoryError("an ok operation needs complete_s")
            if self.outcome not in _OUTCOMES_OF[self.f]:
                raise HistoryError(
                    f"outcome of an ok {self.f} must be one of {_OUTCOMES_OF[self.f]}, got {self.outcome!r}"
                )
        elif self.outcome is not None:
            raise HistoryError(f"outcome must be null when result is {self.result}")
        if self.f in ("create", "update") and not self.value:
            raise HistoryError(f"a {self.f} needs the fields it writes in value")
        if self.f == "delete" and self.value is not None:
            raise HistoryError("a delete has no value")
        if self.f == "read" and self.result == "ok" and (self.value is None) != (self.outcome == "not_found"):
            raise HistoryError("an ok read has a value exactly when its outcome is done")

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, record: dict[str, Any]) -> Op:
        if not isinstance(record, dict):
            raise HistoryError("a record must be a JSON object")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(record) - names)
        if unknown:
            raise HistoryError(f"unknown field(s) {unknown}")
        try:
            return cls(**record)
        except TypeError as e:  # a missing field
            raise HistoryError(str(e)) from None


def dump(ops: Iterable[Op], out: IO[str]) -> None:
    """Write one JSON line per operation."""
    for op in ops:
        out.write(json.dumps(op.to_json(), separators=(",", ":"), allow_nan=False) + "\n")


def dumps(ops: Iterable[Op]) -> str:
    return "".join(json.dumps(op.to_json(), separators=(",", ":"), allow_nan=False) + "\n" for op in ops)


def iter_load(lines: Iterable[str]) -> Iterator[Op]:
    """Parse JSON lines (blank lines skipped); a bad record raises HistoryError naming its line."""
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            yield Op.from_json(json.loads(line))
        except (json.JSONDecodeError, HistoryError) as e:
            raise HistoryError(f"line {n}: {e}") from None


def load(path: str | Path) -> list[Op]:
    with open(path, encoding="utf-8") as f:
        return list(iter_load(f))
