"""How report.md writes a figure: a number, an estimate with its interval, a paired difference, a table (shared by
`evaluation.report` and `evaluation.findings_report`)."""

from __future__ import annotations

import math


def num(x, digits: int = 3) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def est(e: dict) -> str:
    """value [low, high]."""
    if e.get("unavailable"):
        return "unavailable"
    return f"{num(e['value'])} [{num(e['ci'][0])}, {num(e['ci'][1])}]"


def diff(d: dict) -> str:
    """difference [low, high], p (and Holm's p where there is one)."""
    if d.get("unavailable"):
        return "unavailable"
    value = "n/a" if math.isnan(d["value"]) else f"{d['value']:+.3f}"
    holm = f", Holm p={num(d['p_holm'], 4)}" if "p_holm" in d else ""
    return f"{value} [{num(d['ci'][0])}, {num(d['ci'][1])}], p={num(d['p_value'], 4)}{holm}"


def table(header: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|---" * len(header) + "|", *["| " + " | ".join(r) + " |" for r in rows]]
