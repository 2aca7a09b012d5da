"""Counting starts in time windows, for the rate-limit tests and bench.rate_figures."""

from __future__ import annotations

from collections.abc import Sequence


def most_in_window(times: Sequence[float], window: float) -> int:
    """The most of ``times`` in any half-open window [t, t + window)."""
    ordered, best, first = sorted(times), 0, 0
    for last, t in enumerate(ordered):
        while t - ordered[first] >= window:
            first += 1
        best = max(best, last - first + 1)
    return best
