"""Exceptions that the command-line tools turn into a one-line message and a non-zero exit."""


class FlaxmnistError(Exception):
    """A problem the user can fix (bad input, bad config, missing data); never a bug."""


class ConfigError(FlaxmnistError):
    """A config value is invalid or a name does not resolve in a registry."""


class DataError(FlaxmnistError):
    """Dataset files are missing, truncated, corrupt or cannot be downloaded."""


class SignalReceived(KeyboardInterrupt):
    """SIGINT or SIGTERM arrived where the run cannot stop cleanly: it ends without saving."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


def raise_signal_received(signum: int, frame) -> None:
    """A signal handler that turns the signal into :class:`SignalReceived`."""
    raise SignalReceived(signum)
