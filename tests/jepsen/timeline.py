"""A run's timeline as one HTML page with an inline SVG: operations per second by result, faults as bands."""

from __future__ import annotations

import html
import math
from collections.abc import Sequence

from tests.jepsen.history import Op
from tests.jepsen.nemesis import Fault

COLOURS = {"ok": "#2e7d32", "fail": "#f9a825", "unknown": "#c62828"}
FAULT_COLOURS = {
    "kill": "#90caf9",
    "pause": "#ce93d8",
    "partition-primary": "#ffcc80",
    "partition-shard": "#ffab91",
    "shard-down": "#b0bec5",
}
WIDTH, HEIGHT, LEFT, TOP, BAND = 1200, 260, 50, 20, 22


def render(ops: Sequence[Op], faults: Sequence[Fault], title: str, summary_lines: Sequence[str]) -> str:
    end = max([op.complete_s or op.invoke_s for op in ops] + [f.healthy_s for f in faults] + [1.0])
    seconds = math.ceil(end)
    buckets = [{"ok": 0, "fail": 0, "unknown": 0} for _ in range(seconds + 1)]
    for op in ops:
        buckets[int(op.complete_s if op.complete_s is not None else op.invoke_s)][op.result] += 1
    peak = max(max(sum(b.values()) for b in buckets), 1)
    scale_x = (WIDTH - LEFT - 10) / seconds
    plot_h = HEIGHT - TOP - BAND - 30
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" font-family="sans-serif" '
        'font-size="11">'
    ]
    for fault in faults:  # bands behind the bars: from the fault's start to the cluster healthy again
        x = LEFT + fault.start_s * scale_x
        w = max((fault.healthy_s - fault.start_s) * scale_x, 1)
        colour = FAULT_COLOURS.get(fault.kind, "#ddd")
        tip = html.escape(
            f"{fault.kind} at {fault.start_s:.1f} s, healed at {fault.heal_s:.1f} s, healthy at {fault.healthy_s:.1f} s: "
            f"{fault.target}; {fault.note}"
        )
        parts.append(
            f'<rect x="{x:.1f}" y="{TOP}" width="{w:.1f}" height="{plot_h + BAND}" fill="{colour}" opacity="0.45">'
            f"<title>{tip}</title></rect>"
        )
    for second, bucket in enumerate(buckets):
        y = TOP + plot_h
        for result in ("ok", "fail", "unknown"):
            h = bucket[result] / peak * plot_h
            if h:
                y -= h
                parts.append(
                    f'<rect x="{LEFT + second * scale_x:.1f}" y="{y:.1f}" width="{max(scale_x, 1):.1f}" '
                    f'height="{h:.1f}" fill="{COLOURS[result]}"><title>{second} s: {bucket[result]} {result}</title></rect>'
                )
    axis_y = TOP + plot_h + BAND
    parts.append(f'<line x1="{LEFT}" y1="{axis_y}" x2="{WIDTH - 10}" y2="{axis_y}" stroke="#333"/>')
    step = max(10, 10 * math.ceil(seconds / 200))
    for tick in range(0, seconds + 1, step):
        x = LEFT + tick * scale_x
        parts.append(f'<text x="{x:.1f}" y="{axis_y + 14}" text-anchor="middle">{tick}</text>')
    parts.append(f'<text x="{LEFT - 5}" y="{TOP + 8}" text-anchor="end">{peak}/s</text>')
    parts.append(f'<text x="{WIDTH // 2}" y="{HEIGHT - 2}" text-anchor="middle">seconds since the start</text>')
    parts.append("</svg>")
    legend = " ".join(
        f'<span style="background:{c};padding:0 6px">{html.escape(name)}</span>'
        for name, c in [*COLOURS.items(), *FAULT_COLOURS.items()]
    )
    items = "".join(f"<li>{html.escape(line)}</li>" for line in summary_lines)
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title></head>"
        f"<body><h1>{html.escape(title)}</h1><ul>{items}</ul><p>Operations completed per second by result; "
        f"bands: a fault from its start until the cluster was healthy again (hover for details).</p>"
        f"<p>{legend}</p>{''.join(parts)}</body></html>\n"
    )
