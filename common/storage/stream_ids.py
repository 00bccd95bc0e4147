"""Redis stream entry ids (`<ms>-<seq>`) as comparable pairs of integers."""

from __future__ import annotations

StreamId = tuple[int, int]


def parse_id(raw: bytes | str) -> StreamId:
    """An entry id as (milliseconds, sequence); a bare `<ms>` has sequence 0. ValueError if it isn't an id."""
    text = raw.decode() if isinstance(raw, bytes) else raw
    ms, _, seq = text.partition("-")
    return int(ms), int(seq or 0)


def format_id(stream_id: StreamId) -> str:
    return f"{stream_id[0]}-{stream_id[1]}"
