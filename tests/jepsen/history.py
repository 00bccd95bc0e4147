"""The history format shared by the recorder (tests/jepsen/run.py) and the checker: one JSON object a line.

An operation's `result` says what its caller knows: `ok` (the call answered; `outcome` says what: create
`done` or `exists`, update and delete `done` or `not_found`, read `done` with `value` or `not_found`),
`fail` (proven not to have run), `unknown` (it may have taken effect at any point after its invocation,
or never: a deadline, OUTCOME_UNKNOWN, a connection lost after sending).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

Function = Literal["create", "update", "delete", "read"]
Result = Literal["ok", "fail", "unknown"]
Via = Literal["grpc", "rest"]


@dataclass
class Op:
    process: int
    key: str
    f: Function
    value: dict[str, str] | None  # what a write wrote, what a read returned (None: nothing, or not known)
    invoke_s: float
    complete_s: float | None  # when the caller got its answer or gave up
    result: Result
    outcome: str  # "done", "exists", "not_found", or "" when the result is not ok
    via: Via


def dump(ops: Iterable[Op], path: Path) -> None:
    with path.open("w") as file:
        for op in ops:
            file.write(json.dumps(asdict(op), sort_keys=True) + "\n")


def load(path: Path) -> list[Op]:
    with path.open() as file:
        return [Op(**json.loads(line)) for line in file if line.strip()]
