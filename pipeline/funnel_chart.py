"""The funnel as a DVC plot (CSV) and a PNG bar chart: photos remaining after each filter, and drops per reason."""

from __future__ import annotations

import csv
import io
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from pipeline.store import atomic_file, write_text_atomic

BAR_H, GAP, LABEL_W, BAR_W, MARGIN = 18, 6, 190, 520, 12
KEPT, REMOVED, REASON = (60, 130, 200), (220, 90, 70), (150, 150, 150)


def funnel_rows(report: dict) -> list[dict]:
    """``step, removed, remaining`` rows (found, each filter in funnel order, kept) for DVC plots."""
    rows = [{"step": "found", "removed": 0, "remaining": report["found"]}]
    rows += [{"step": name, "removed": report["removed"][name], "remaining": report["remaining"][name]}
             for name in report["removed"]]
    return rows + [{"step": "kept", "removed": 0, "remaining": report["kept"]}]


def write_csv(report: dict, path: str | Path) -> None:
    """The funnel rows as CSV, written atomically."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=["step", "removed", "remaining"], lineterminator="\n")
    writer.writeheader()
    writer.writerows(funnel_rows(report))
    write_text_atomic(buf.getvalue(), path)


def _bars(draw: ImageDraw.ImageDraw, y: int, items: list[tuple[str, int, int, tuple]], top: int, font) -> int:
    for label, value, removed, colour in items:
        draw.text((MARGIN, y + 3), label, fill=(0, 0, 0), font=font)
        width = int(BAR_W * value / top) if top else 0
        draw.rectangle([LABEL_W, y, LABEL_W + width, y + BAR_H], fill=colour)
        if removed:
            extra = int(BAR_W * removed / top)
            draw.rectangle([LABEL_W + width, y, LABEL_W + width + extra, y + BAR_H], fill=REMOVED)
        draw.text((LABEL_W + width + (int(BAR_W * removed / top) if removed and top else 0) + 6, y + 3),
                  f"{value}" + (f"  (-{removed})" if removed else ""), fill=(0, 0, 0), font=font)
        y += BAR_H + GAP
    return y


def render_png(report: dict) -> bytes:
    """A bar chart: remaining photos after each filter (red: what that filter removed), then drops per reason."""
    font = ImageFont.load_default()
    steps = funnel_rows(report)
    reasons = sorted(report["by_reason"].items(), key=lambda kv: (-kv[1], kv[0]))
    height = 2 * MARGIN + 40 + (len(steps) + len(reasons)) * (BAR_H + GAP)
    img = Image.new("RGB", (LABEL_W + BAR_W + 120, height), (255, 255, 255))
    draw = ImageDraw.Draw(img)
    top = max(report["found"], 1)
    draw.text((MARGIN, MARGIN), f"funnel: {report['found']} found -> {report['kept']} kept", fill=(0, 0, 0), font=font)
    y = _bars(draw, MARGIN + 20, [(s["step"], s["remaining"], s["removed"], KEPT) for s in steps], top, font)
    draw.text((MARGIN, y + 2), "drops by reason (first reason per photo)", fill=(0, 0, 0), font=font)
    _bars(draw, y + 20, [(code, n, 0, REASON) for code, n in reasons], max([n for _, n in reasons], default=1), font)
    out = io.BytesIO()
    img.save(out, format="PNG", optimize=False)
    return out.getvalue()


def write_png(report: dict, path: str | Path) -> None:
    """The bar chart, written atomically."""
    with atomic_file(path) as tmp:
        Path(tmp).write_bytes(render_png(report))
