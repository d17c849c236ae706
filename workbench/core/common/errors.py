"""Errors that carry a message meant for the user."""


class WorkbenchError(Exception):
    """A problem the user can act on; ``str(error)`` is a complete one-line message."""


class Cancelled(Exception):
    """Raised inside a job when the user cancelled it."""


class NeedsRemoteCode(WorkbenchError):
    """The model only loads by running Python code shipped with it."""


class NeedsPickle(WorkbenchError):
    """The model's weights exist only as pickle files, which can run code when loaded."""
