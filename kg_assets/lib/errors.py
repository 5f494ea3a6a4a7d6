"""Engine exceptions, one class per exit-code family; the CLI turns them into a message and an exit code."""

from __future__ import annotations


class KgError(Exception):
    """Base of every error the engine raises on purpose; `exit_code` is what `indexctl` exits with."""

    exit_code = 1


class UsageError(KgError):
    """The request itself is malformed (bad version id, unknown option value)."""

    exit_code = 2


class NotFoundError(KgError):
    """A version, file or directory that the request names does not exist."""

    exit_code = 3


class ValidationError(KgError):
    """An artifact fails validation or its bytes no longer match the manifest."""

    exit_code = 4


class ConflictError(KgError):
    """Another operation holds the lock, an expected value is stale, or the target already exists."""

    exit_code = 5


class Interrupted(KgError):
    """A signal (SIGINT, SIGTERM) stopped the operation midway; exit 130, as a shell's for SIGINT."""

    exit_code = 130
