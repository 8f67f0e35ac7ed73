"""One exception root for stopwise.

Hierarchy::

    StopwiseError                 every error stopwise raises on purpose
    ├── TraceFormatError          a data file is malformed (names file, line, field)
    ├── TraceSetError             a trace-set directory is missing, corrupt or incompatible
    ├── ConfigError               a bad option, name or combination of settings
    │   └── UnknownNameError      a registry lookup failed (lists the valid names)
    ├── MissingExtraError         an optional dependency is not installed (gives the pip line)
    ├── NotFittedError            an estimator was used before ``fit``/``calibrate``
    ├── UnsupportedError          a trace set lacks the fields a policy needs
    └── BackendError              a model backend failed (``retryable`` says whether to retry)

Foreign errors are mapped at the boundary with ``raise ... from exc``. The CLI turns
any :class:`StopwiseError` into one line on stderr and exit status 2.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class StopwiseError(Exception):
    """Root of every error stopwise raises on purpose.

    Parameters
    ----------
    message : str
        What was wrong.
    hint : str, optional
        How to fix it.
    """

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        self.message = message
        self.hint = hint
        super().__init__(self.__str__())

    def __str__(self) -> str:
        if self.hint:
            return f"{self.message} (hint: {self.hint})"
        return self.message


class TraceFormatError(StopwiseError):
    """A data file is malformed; the message names the file, the line and the field."""

    def __init__(
        self,
        message: str,
        *,
        path: str | None = None,
        line: int | None = None,
        field: str | None = None,
        hint: str | None = None,
    ) -> None:
        self.path = path
        self.line = line
        self.field = field
        where = ""
        if path is not None:
            where = str(path)
            if line is not None:
                where += f":{line}"
            where += ": "
        if field is not None:
            where += f"field '{field}': "
        super().__init__(where + message, hint=hint)


class TraceSetError(StopwiseError):
    """A trace-set directory is missing, corrupt, or written by an incompatible schema."""


class ConfigError(StopwiseError):
    """A bad option value, name, or combination of settings."""


class UnknownNameError(ConfigError):
    """A registry lookup failed; the message lists the valid names and the closest match."""

    def __init__(self, kind: str, name: str, valid: Iterable[str]) -> None:
        valid = sorted(valid)
        close = difflib.get_close_matches(name, valid, n=1)
        hint = f"did you mean '{close[0]}'?" if close else "choose one of the valid names above"
        super().__init__(f"unknown {kind} '{name}'; valid: {', '.join(valid)}", hint=hint)


class MissingExtraError(StopwiseError):
    """An optional dependency is missing; the hint is the exact pip line."""

    def __init__(self, what: str, extra: str, package: str) -> None:
        super().__init__(
            f"{what} needs the optional package '{package}'",
            hint=f"pip install 'stopwise[{extra}]'",
        )


class NotFittedError(StopwiseError):
    """An estimator was used before it was fitted or calibrated."""


class UnsupportedError(StopwiseError):
    """A trace set lacks a field that a policy or command needs."""


class BackendError(StopwiseError):
    """A model backend failed: refused connection, timeout, bad response, load failure.

    Parameters
    ----------
    message : str
    retryable : bool
        True where the same request may succeed if sent again (timeouts, 5xx, resets).
    hint : str, optional
    status : int, optional
        The upstream HTTP status, where there was one.
    retry_after : float, optional
        Seconds the upstream asked to wait before a retry (its ``Retry-After`` header).
    """

    def __init__(self, message: str, *, retryable: bool = False, hint: str | None = None, status: int | None = None,
                 retry_after: float | None = None) -> None:
        self.retryable = retryable
        self.status = status
        self.retry_after = retry_after
        super().__init__(message, hint=hint)
