"""Errors taskshare raises on bad input. Each message is one line naming the problem and the fix."""


class TaskshareError(Exception):
    """Base class: the CLI prints the message on one line and exits with status 2."""


class DataError(TaskshareError):
    """Missing or malformed data files."""


class ConfigError(TaskshareError):
    """A bad config file, `--set` value or option."""


class ArtifactError(TaskshareError):
    """A corrupted, mismatched or unreadable saved artifact or checkpoint."""


class TrainingError(TaskshareError):
    """Training cannot go on (non-finite loss, ...)."""
