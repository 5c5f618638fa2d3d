"""The one exception type for errors a user can cause.

The CLI turns a :class:`FaceganError` into one clear line on stderr and a non-zero exit; anything
else is a bug and keeps its traceback.
"""


class FaceganError(Exception):
    """A problem with the user's input or environment, explained in the message."""
