"""Errors that reach the user as one clear line and an exit code."""


class CtbpfError(Exception):
    """A failure the user can act on; str() is the one line we print."""

    exit_code = 1


class UsageError(CtbpfError):
    """Bad command-line arguments or configuration."""

    exit_code = 2
