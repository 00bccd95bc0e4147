"""Schemathesis hooks for the fuzzing run in tests/test_public_edge.py (loaded through SCHEMATHESIS_HOOKS).

GET /profile/events is the change feed, a stream that stays open: a generated user called "events" on
GET /profile/{user} would wait out the request timeout instead of testing anything.
"""

from __future__ import annotations

from typing import Any

import schemathesis


@schemathesis.hook
def filter_path_parameters(context: Any, path_parameters: dict[str, Any] | None) -> bool:
    return not path_parameters or path_parameters.get("user") != "events"
