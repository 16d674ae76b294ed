"""hqm: DETR-based human-object interaction detection with Hard-Positive Query Mining."""

__version__ = "0.1.0"
