"""The root of every error a user can cause: bad config, bad file, provider down.

Each subclass carries a message that says what went wrong *and what to do*; callers at the edge
(train.py, evolve.py) print it without a traceback.
"""


class AutodidactError(Exception):
    """Base class for user-facing errors."""


class ConfigError(AutodidactError):
    """A configuration value is missing or invalid.

    ``problems`` holds one line per bad setting, so errors from several sections can be merged into
    the one message a run prints (``config.check_sections``).
    """

    def __init__(self, message: str, problems: list[str] | None = None) -> None:
        super().__init__(message)
        self.problems = list(problems) if problems else [message]
