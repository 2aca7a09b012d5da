"""Small statistics helpers: percentiles of one run, and median/spread across repetitions."""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0..100), linear between closest ranks; NaN for no values."""
    if not values:
        return math.nan
    data = sorted(values)
    pos = (len(data) - 1) * q / 100
    lo, hi = math.floor(pos), math.ceil(pos)
    return data[lo] + (data[hi] - data[lo]) * (pos - lo)


def latency_summary(latencies_ms: Sequence[float]) -> dict[str, float]:
    if not latencies_ms:
        return {}
    return {
        "n": float(len(latencies_ms)),
        "p50": percentile(latencies_ms, 50),
        "p90": percentile(latencies_ms, 90),
        "p99": percentile(latencies_ms, 99),
        "max": max(latencies_ms),
        "mean": statistics.fmean(latencies_ms),
    }


def clean(values: Sequence[float | None]) -> list[float]:
    return [v for v in values if v is not None and not math.isnan(v)]


def median(values: Sequence[float | None]) -> float:
    data = clean(values)
    return statistics.median(data) if data else math.nan


def spread(values: Sequence[float | None]) -> tuple[float, float]:
    data = clean(values)
    return (min(data), max(data)) if data else (math.nan, math.nan)


def fmt(value: float, digits: int = 0) -> str:
    if value is None or math.isnan(value):
        return "n/a"
    if digits == 0:
        return f"{value:,.0f}"
    return f"{value:,.{digits}f}"


def fmt_spread(values: Sequence[float | None], digits: int = 0) -> str:
    """``median (min-max)`` over repetitions; just the value when there is one."""
    data = clean(values)
    if not data:
        return "n/a"
    mid = fmt(median(data), digits)
    if len(data) == 1:
        return mid
    lo, hi = spread(data)
    return f"{mid} ({fmt(lo, digits)}-{fmt(hi, digits)})"
