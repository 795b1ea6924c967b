"""Errors shared by the CLI and plugins."""


class UsageError(Exception):
    """A user error (bad arguments, missing inputs): the CLI prints it without a traceback and exits with 2.

    Plugins (trainers, methods) raise it too; it lives here, not in ``harness.cli``, so that it is one class even
    when the CLI runs as ``python -m harness.cli``.
    """
