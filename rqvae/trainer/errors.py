"""The two errors a command reports as one line and exit code 2: the user's to fix."""


class ConfigError(ValueError):
    """A config file or value the user must fix; the message names the key and the fix."""


class UserError(Exception):
    """A mistake the user must fix (a path, a missing run or checkpoint, a missing extra); the
    message names it and the fix."""
