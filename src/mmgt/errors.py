"""Error types that entry points turn into one clear line (file named, what to do) instead of a traceback."""

from __future__ import annotations


class GenerationError(ValueError):
    """A generation input that cannot be used (missing file, silent audio, no person, mismatched checkpoint).

    The message names the input and what to do; the pipeline raises it *before* writing any output.
    """


class CheckpointError(GenerationError):
    """A checkpoint or export that cannot be used: unreadable, of the other stage, not fitting the configured
    network, or holding stored settings that would run code. The message names the file."""
