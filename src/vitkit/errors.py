"""The one exception type users see from vitkit.

Every mistake a user can make (bad path, wrong image size, unknown name, corrupt file)
is reported as a ``VitkitError`` with a one-line message saying what is wrong and what
to do. It subclasses ``ValueError`` so plain ``except ValueError`` code keeps working.
"""
from __future__ import annotations

# torch's ExceptionWrapper: "Caught X in DataLoader worker process N.\nOriginal Traceback..."
_WORKER_PREFIX = "Caught "


def _original_message(message: str, class_name: str) -> str:
    """The message a DataLoader worker raised, from the traceback text torch re-raises it with."""
    if not (message.startswith(_WORKER_PREFIX + class_name) and "\nOriginal Traceback" in message):
        return message
    marker = f"{class_name}: "
    for line in reversed(message.rstrip("\n").splitlines()):
        head, sep, rest = line.partition(marker)
        if sep and (not head or head.endswith(".")) and " " not in head:  # "vitkit.errors.VitkitError: ..."
            return rest
    return message


def printable(text: str) -> str:
    """``text`` on one line: control characters (newlines, tabs, escapes) shown as escapes (``\\n``)."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


class VitkitError(ValueError):
    """A user-facing error: one line, names the problem and the fix.

    Raised inside a DataLoader worker, it reaches the main process as the same one line
    (torch re-raises worker errors with the whole traceback as the message).
    """

    def __init__(self, message: object = "", *args: object):
        if isinstance(message, str):
            message = _original_message(message, type(self).__name__)
        super().__init__(message, *args)
