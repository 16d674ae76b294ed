"""hqm: DETR-based human-object interaction detection with Hard-Positive Query Mining."""

__version__ = "0.1.0"

__all__ = ["HOIDetector", "PredictOptionError", "__version__"]


def __getattr__(name: str):
    # lazy: `import hqm` stays light (no torch import) until the API is used
    if name in ("HOIDetector", "PredictOptionError"):
        import hqm.api

        return getattr(hqm.api, name)
    raise AttributeError(f"module 'hqm' has no attribute {name!r}")
