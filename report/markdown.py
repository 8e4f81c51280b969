"""The Markdown toolkit of the report: number and time formats, table cells, tables, literal block quotes."""

from __future__ import annotations

import math
import re
from datetime import datetime, timezone
from typing import Any

MISSING = "–"  # an empty table cell


def fmt_int(n: Any) -> str:
    """1234567 -> '1,234,567'."""
    return f"{int(n):,}"


def fmt_sig(x: Any, digits: int = 3) -> str:
    """Three significant digits, trailing zeros kept (5.16, 2.03, 0.310, 12.0); losses, bpb and scores."""
    x = float(x)
    if not math.isfinite(x):
        return str(x)
    if x != 0 and (abs(x) >= 10 ** digits or abs(x) < 1e-4):
        return f"{x:.{digits - 1}e}"
    return f"{x:#.{digits}g}".rstrip(".")


def fmt_num(x: Any) -> str:
    """Any number from a JSON file: integers with thousands separators, others with three significant digits."""
    if isinstance(x, bool):
        return str(x).lower()
    if isinstance(x, int) or (isinstance(x, float) and x.is_integer() and abs(x) >= 1000):
        return f"{int(x):,}"
    return fmt_sig(x)


def fmt_setting(x: Any) -> str:
    """A config value as it was given: 0.06 stays 0.06, 50304 reads 50,304, True reads true."""
    if isinstance(x, bool):
        return str(x).lower()
    if isinstance(x, int):
        return f"{x:,}"
    if isinstance(x, float):
        return repr(x)
    return str(x)


def fmt_short(n: float) -> str:
    """6529024 -> '6.53M'."""
    for unit, scale in (("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= scale:
            return f"{fmt_sig(n / scale)}{unit}"
    return fmt_num(n)


def fmt_duration(seconds: float) -> str:
    """12.3 s, 4 min 05 s, 2 h 03 min."""
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, s = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {s:02d} s"
    hours, m = divmod(minutes, 60)
    return f"{hours} h {m:02d} min"


def fmt_time(ts: float) -> str:
    """A file time in UTC: '2025-11-25 13:51 UTC'."""
    return datetime.fromtimestamp(ts, tz=timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def cell(value: Any) -> str:
    """Text safe inside a Markdown table cell."""
    return str(value).replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ")


def table(header: list[str], rows: list[list[Any]], align: str | None = None) -> str:
    """A GitHub Markdown table; `align` holds one of 'l', 'r' per column (default: first left, the rest right)."""
    align = align or "l" + "r" * (len(header) - 1)
    sep = ["---:" if a == "r" else "---" for a in align]
    lines = ["| " + " | ".join(cell(h) for h in header) + " |", "| " + " | ".join(sep) + " |"]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


_MD_SPECIAL = re.compile(r"([\\`*_\[\]<>#|~!{}])")
_LIST_START = re.compile(r"^(\s*)([-+]|\d+\.)(\s)")


def quote(text: str) -> str:
    """`text` as a Markdown block quote that renders literally (model output may hold Markdown or HTML)."""
    lines = []
    for line in str(text).splitlines() or [""]:
        line = _MD_SPECIAL.sub(r"\\\1", line)
        line = _LIST_START.sub(lambda m: m.group(1) + m.group(2).replace(".", "\\.").replace("-", "\\-").replace("+", "\\+") + m.group(3), line)
        lines.append(f"> {line}" if line.strip() else ">")
    return "  \n".join(lines)  # two trailing spaces: a hard line break, so the text keeps its lines
