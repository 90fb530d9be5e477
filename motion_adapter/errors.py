"""The exceptions this library raises: each names what was wrong and how to fix it.

They subclass the built-in error a caller would expect (ValueError, FileNotFoundError), so code that already
catches those keeps working.
"""


class MotionAdapterError(Exception):
    """Base class of every error raised by motion_adapter."""


class TargetError(MotionAdapterError, ValueError):
    """A preset or regex selects no layers, or the model is not in the target table."""


class AdapterFormatError(MotionAdapterError, ValueError):
    """A file is not a readable adapter: corrupt, truncated, pickled, or from an unknown format version."""


class IncompatibleAdapterError(MotionAdapterError, ValueError):
    """An adapter does not fit the model it is loaded into (another architecture, other layer shapes)."""


class AdapterStateError(MotionAdapterError, ValueError):
    """A request does not fit the adapters loaded: unknown or duplicate name, token clash, fused state."""


class AdapterNotFoundError(MotionAdapterError, FileNotFoundError):
    """A source is neither a local adapter nor a Hub repository that can be reached."""
