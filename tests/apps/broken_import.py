"""A deploy whose module raises at import."""

raise RuntimeError("settings file missing")
