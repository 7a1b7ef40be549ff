"""Errors that Hearken raises on purpose, each with the exit code the CLI maps it to.

Every error says what went wrong *and* what to do about it, because the people who meet
them (an integration engineer at 2 a.m., an operations analyst running a backlog) cannot
read the source. The CLI turns them into one line on stderr and a documented exit code;
the HTTP service turns them into 4xx responses. A traceback is always a bug.
"""

from __future__ import annotations


class HearkenError(Exception):
    """Base class: a failure the user can act on. ``exit_code`` is stable and documented."""

    exit_code: int = 1

    def __init__(self, message: str, *, fix: str | None = None) -> None:
        self.message = message
        self.fix = fix
        super().__init__(f"{message} Fix: {fix}" if fix else message)


class InputError(HearkenError):
    """The message itself cannot be routed (empty, binary, not decodable, too long)."""

    exit_code = 3


class ModelLoadError(HearkenError):
    """A model folder is missing, incomplete, corrupted or from an incompatible version."""

    exit_code = 4


class ConfigError(HearkenError):
    """A configuration, policy or catalogue file is invalid."""

    exit_code = 5


class DataError(HearkenError):
    """A data set or data directory that a command needs is missing or malformed."""

    exit_code = 6
