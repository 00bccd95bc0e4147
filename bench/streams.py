"""Stream length over the run: the partition streams must stay bounded while events keep coming.

A background thread samples XLEN of every events stream once a second; entries-added from
XINFO STREAM says how many events were appended meanwhile, for comparison.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

from redis.cluster import RedisCluster

from common.storage import keys

BASELINE_STREAM = "profile:events"


@dataclass
class StreamSummary:
    samples: int
    max_total: int  # the largest sum of XLEN over the partition streams seen
    final_total: int
    appended: int  # entries added to the partition streams while sampling
    baseline_final: int  # the seed's single stream, which nothing ever trims
    series: list[int] = field(default_factory=list)


class StreamSampler:
    def __init__(self, url: str, partitions: int, interval_s: float = 1.0) -> None:
        self.client = RedisCluster.from_url(url, decode_responses=True)
        self.streams = [keys.events_key(p) for p in range(partitions)]
        self.interval_s = interval_s
        self.series: list[int] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="stream-sampler", daemon=True)
        self._added_at_start = 0

    def _total(self) -> int:
        return sum(self.client.xlen(stream) for stream in self.streams)

    def _added(self) -> int:
        total = 0
        for stream in self.streams:
            if self.client.exists(stream):
                total += int(self.client.xinfo_stream(stream)["entries-added"])
        return total

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.series.append(self._total())

    def __enter__(self) -> StreamSampler:
        self._added_at_start = self._added()
        self.series.append(self._total())
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def summary(self) -> StreamSummary:
        final = self._total()
        baseline = self.client.xlen(BASELINE_STREAM)
        summary = StreamSummary(
            samples=len(self.series) + 1,
            max_total=max([*self.series, final]),
            final_total=final,
            appended=self._added() - self._added_at_start,
            baseline_final=baseline,
            series=[*self.series, final],
        )
        self.client.close()
        return summary
