"""One exception family: every error a user can cause says what is wrong and how to fix it.

The CLI turns any ``ProbekitError`` into a single ``error: ...`` line and a non-zero exit code;
notebooks show the same message.
"""


class ProbekitError(Exception):
    """Base class: bad input or state that the user can fix. The message names the thing and the fix."""


class ModelLoadError(ProbekitError):
    """A model id/path that can't be loaded, or an architecture probekit does not support."""


class DataError(ProbekitError):
    """A dataset or image file that can't be used."""


class PromptError(ProbekitError):
    """A prompt variant definition that is incomplete or inconsistent."""


class StoreError(ProbekitError):
    """An activation store that does not match the request or is damaged."""
