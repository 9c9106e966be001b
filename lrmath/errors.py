"""The lrmath exception hierarchy.

Every error lrmath raises on bad input is a :class:`LrmathError` and, at the same
time, the built-in exception a caller would expect (``ValueError`` for a bad shape,
``TypeError`` for a bad dtype, ...), so ``except ValueError`` keeps working.
"""

from __future__ import annotations

__all__ = [
    "LrmathError",
    "ShapeError",
    "RankError",
    "DTypeError",
    "NonFiniteError",
    "EmptyInputError",
    "DeviceError",
    "FormatError",
    "BackendUnavailableError",
    "FetchError",
]


class LrmathError(Exception):
    """Base class of every error raised by lrmath."""


class ShapeError(LrmathError, ValueError):
    """An array has the wrong number of dimensions or incompatible shapes."""


class RankError(ShapeError):
    """A requested rank is out of range (e.g. ``r > min(m, n)`` or ``r < 1``)."""


class DTypeError(LrmathError, TypeError):
    """An array has a dtype the operation does not accept (integer, complex, ...)."""


class NonFiniteError(LrmathError, ValueError):
    """An input holds NaN or Inf where finite values are required."""


class EmptyInputError(ShapeError):
    """An input has a zero-length axis where data is required."""


class DeviceError(LrmathError, ValueError):
    """Inputs live on different devices or in different array libraries."""


class FormatError(LrmathError, ValueError):
    """A file is corrupt, truncated, of an unknown version, or does not match."""


class BackendUnavailableError(LrmathError, ImportError):
    """An optional backend (CuPy, Numba, torch, a GPU) is not available."""


class FetchError(LrmathError, OSError):
    """A pinned model or data set (:mod:`lrmath.data.fetch`) could not be fetched or verified.

    Offline, a hash mismatch, a member missing from the archive, or an unknown item; the
    message names the package and what to do.
    """
