"""The one base class of every error that a user can fix by changing their input.

The command line and the widgets catch :class:`NapariUnetError` (and nothing broader)
and show its message as one line; anything else is a bug and surfaces as a traceback.
Each subclass also derives from the built-in exception it refines (``ValueError``,
``OSError``, ...) so callers can keep catching those.
"""

from __future__ import annotations


class NapariUnetError(Exception):
    """A problem with what the user gave (an image, labels, a model file, a setting,
    an output path); the message says what to change."""


class ConfigError(NapariUnetError, ValueError):
    """A setting outside its allowed range, or a device or precision this machine lacks."""


class OutputFileError(NapariUnetError, OSError):
    """A result that could not be written where the user asked."""


class TrainingError(NapariUnetError, RuntimeError):
    """Training cannot go on (e.g. the loss diverged)."""
