"""Redis stream entry ids (`<ms>-<seq>`) as comparable pairs of integers."""

from __future__ import annotations

from common.storage.replies import text

StreamId = tuple[int, int]


def parse_id(raw: bytes | str) -> StreamId:
    """An entry id as (milliseconds, sequence); a bare `<ms>` has sequence 0. ValueError if it isn't an id."""
    ms, _, seq = text(raw).partition("-")
    return int(ms), int(seq or 0)


def format_id(stream_id: StreamId) -> str:
    return f"{stream_id[0]}-{stream_id[1]}"
