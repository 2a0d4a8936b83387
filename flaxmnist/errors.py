"""Exceptions that the command-line tools turn into a one-line message and a non-zero exit."""


class FlaxmnistError(Exception):
    """A problem the user can fix (bad input, bad config, missing data); never a bug."""


class ConfigError(FlaxmnistError):
    """A config value is invalid or a name does not resolve in a registry."""


class DataError(FlaxmnistError):
    """Dataset files are missing, truncated, corrupt or cannot be downloaded."""
