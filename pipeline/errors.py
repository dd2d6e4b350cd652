"""Exceptions that tell the user what to change.

Every exception derives from :class:`CrossviewError` and from the builtin that matches its
meaning, so callers can catch either. Messages name the param, file or row to fix and never
contain credentials.
"""

from __future__ import annotations

import os
import re

_ADDRESS = re.compile(r" (?:object )?at 0x[0-9a-fA-F]+")


def describe(err: BaseException) -> str:
    """``"TypeName: message"`` for a table's error column, without memory addresses (``<_io.BytesIO
    object at 0x7f…>``) so that the same bad input gives the same row in every run."""
    return _ADDRESS.sub("", f"{type(err).__name__}: {err}")


SECRET_ENV = (  # variables whose values never appear in output (pipeline.store.redact masks them too)
    "AWS_SECRET_ACCESS_KEY",
    "AWS_ACCESS_KEY_ID",
    "AWS_SESSION_TOKEN",
    "FLICKR_API_KEY",
    "FLICKR_API_SECRET",
)
MASK = "***"


def mask_secrets(text: str, environ=None) -> str:
    """``text`` with the value of every credential variable in the environment (``SECRET_ENV``) masked:
    the last line of defence for what the CLI prints (log lines, crash tracebacks)."""
    env = os.environ if environ is None else environ
    for name in SECRET_ENV:
        value = (env.get(name) or "").strip()
        if len(value) >= 6 and value in text:
            text = text.replace(value, MASK)
    return text


class CrossviewError(Exception):
    """Base class of every error raised by crossview."""


class ConfigError(CrossviewError, ValueError):
    """params.yaml (or a catalog) has an unknown key, a wrong type or a bad value."""


class CatalogError(CrossviewError, ValueError):
    """A catalog file (AOIs, licences, custom rasters or photos) is malformed."""


class StoreError(CrossviewError, OSError):
    """Reading or writing the image/tile store failed."""


class RasterError(CrossviewError, ValueError):
    """A raster cannot be read or has a layout crossview cannot use."""


class SchemaError(CrossviewError, ValueError):
    """A table does not match its declared schema."""


class StageInputError(CrossviewError, FileNotFoundError):
    """A stage's input table is missing: run the stage that writes it first."""


class InvariantError(CrossviewError, ValueError):
    """The tables would give a dataset that breaks an invariant (a photo lost, attribution missing)."""


class ModelError(CrossviewError, ValueError):
    """A scene model or its weights cannot be loaded or used; the message names the param or file to fix."""
