"""The one exception type users see from vitkit.

Every mistake a user can make (bad path, wrong image size, unknown name, corrupt file)
is reported as a ``VitkitError`` with a one-line message saying what is wrong and what
to do. It subclasses ``ValueError`` so plain ``except ValueError`` code keeps working.
"""


class VitkitError(ValueError):
    """A user-facing error: one line, names the problem and the fix."""
