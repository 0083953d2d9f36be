"""The root of every error a user can cause: bad config, bad file, provider down.

Each subclass carries a message that says what went wrong *and what to do*; callers at the edge
(train.py, evolve.py) print it without a traceback.
"""


class AutodidactError(Exception):
    """Base class for user-facing errors."""


class ConfigError(AutodidactError):
    """A configuration value is missing or invalid."""
