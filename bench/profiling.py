"""Where the time goes: py-spy records a service under load; this summarises its collapsed stacks.

`python -m bench.profiling FILE [TOP]` prints the heaviest functions of a py-spy raw (collapsed)
profile, by self time and by inclusive time, as shares of the samples in which the process was busy.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

_LOCATION = re.compile(r"\s*\((?P<file>[^()]*?)(?::\d+)?\)$")


def _frame(raw: str) -> str:
    """'handle (gateway/app.py:61)' -> 'handle (gateway/app.py)', shortening site-packages paths."""
    match = _LOCATION.search(raw)
    if not match:
        return raw
    path = match["file"]
    path = path.split("site-packages/")[-1].split("/work/main/")[-1]
    return f"{raw[: match.start()]} ({path})"


def summarise(path: Path, top: int = 15) -> dict[str, list[tuple[str, float]]]:
    """Shares of busy samples by self (leaf) frame, by inclusive frame and by top-level package."""
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    packages: Counter[str] = Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        samples = int(count)
        frames = [_frame(f) for f in stack.split(";")]
        # The thread/process name heads each stack; real frames follow it.
        frames = [f for f in frames if "(" in f] or frames
        total += samples
        own[frames[-1]] += samples
        for frame in set(frames):
            inclusive[frame] += samples
        leaf_file = frames[-1].rpartition("(")[2].rstrip(")")
        packages[leaf_file.split("/")[0] if "/" in leaf_file else leaf_file] += samples
    share = lambda counter: [(name, 100 * n / total) for name, n in counter.most_common(top)]  # noqa: E731
    return {
        "self": share(own),
        "inclusive": share(inclusive),
        "package": share(packages),
        "samples": [("busy samples", total)],
    }


def record(pid: int, seconds: int, out: Path, rate: int = 200) -> subprocess.Popen:
    """Start py-spy on a running process for `seconds`; the caller waits for the returned process."""
    spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    return subprocess.Popen(
        [
            spy,
            "record",
            "--pid",
            str(pid),
            "--duration",
            str(seconds),
            "--rate",
            str(rate),
            "--nonblocking",
            "--format",
            "raw",
            "--output",
            str(out),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def main() -> None:
    path, top = Path(sys.argv[1]), int(sys.argv[2]) if len(sys.argv) > 2 else 15
    for title, rows in summarise(path, top).items():
        print(f"\n{title}:")
        for name, value in rows:
            print(f"  {value:6.1f}{'' if title == 'samples' else '%'}  {name}")


if __name__ == "__main__":
    main()
