"""aggregator: poll feeds into a Hugo-ready Markdown store, republish them as feeds."""

__version__ = "0.1.0"
