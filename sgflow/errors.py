"""Exceptions the language raises. Each message says what to write instead."""

from __future__ import annotations


class SgflowError(Exception):
    """Base class for every error sgflow raises on purpose."""


class ProgramMisuseError(SgflowError, TypeError):
    """The program is written in a way the language cannot run (raised at once, where it happens)."""


class ConstraintNotSupportedError(SgflowError, ValueError):
    """A regex / JSON-schema / choices constraint was asked of a backend that cannot enforce it.

    sgflow never drops a constraint silently: it fails instead.
    """


class NoBackendError(SgflowError, RuntimeError):
    """A program ran without a backend."""


class BackendError(SgflowError, RuntimeError):
    """The backend (runtime, server or API) refused or failed a request."""


class StopTracing(Exception):
    """Internal: ends a prefix-only trace at the first value that is not constant text."""
