"""Exceptions raymm raises for bad input.

Every error a user can cause (a missing file, a malformed row, an unknown config key) is a
:class:`RaymmError`; the CLI prints its message and exits non-zero instead of a traceback.
"""

from __future__ import annotations


class RaymmError(Exception):
    """Base class of errors caused by input (files, configs, arguments), not by raymm's own bugs."""


class ConfigError(RaymmError):
    """A configuration file or override is invalid: unknown key, wrong type, unreadable YAML."""


class DataError(RaymmError):
    """A data file is missing, unreadable, or does not follow the items/interactions contract."""


class ImportFormatError(DataError):
    """A source file of an importer is malformed; the message names the file and line."""
