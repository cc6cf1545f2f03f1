"""Calibration: observers that propose a clipping range for each tensor from sample data."""

from .observers import (
    OBSERVERS,
    KLObserver,
    MinMaxObserver,
    MSEObserver,
    Observer,
    PercentileObserver,
    make_observer,
)

__all__ = [
    "OBSERVERS",
    "KLObserver",
    "MSEObserver",
    "MinMaxObserver",
    "Observer",
    "PercentileObserver",
    "make_observer",
]
