"""Statistics the evaluations report."""

from __future__ import annotations

import math

Z95 = 1.959963984540054  # the two-sided 95% quantile of the standard normal


def wilson_interval(successes: float, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval for a proportion (successes may be fractional: ties count one half); (0, 1) for n = 0.
    At a proportion of 0 or 1 that end is exactly 0 or 1 rather than a rounding error away."""
    if n == 0:
        return (0.0, 1.0)
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    low, high = centre - half, centre + half
    return (0.0 if successes == 0 else max(0.0, low), 1.0 if successes == n else min(1.0, high))
