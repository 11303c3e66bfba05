"""Exceptions of the model stage.

:class:`ModelLoadError` is a :class:`~raymm.errors.RaymmError` (a saved model on disk is input);
:class:`NotFittedError` is a caller's bug (a closed-form stage used before ``fit``) and is a
:class:`RuntimeError`.
"""

from __future__ import annotations

from raymm.errors import RaymmError


class ModelLoadError(RaymmError):
    """A saved model cannot be loaded: missing files, another format version, a config that does
    not validate, or input dimensions that differ from the features it is asked to serve."""


class NoAlignedVectorsError(ModelLoadError):
    """The artifact predates cross-media search: its item table has no per-modality aligned vectors.

    Everything else in such an artifact loads and serves; only search needs a re-trained artifact.
    """


class NotFittedError(RuntimeError):
    """A closed-form stage (PCA, CCA, ridge maps) was used before ``fit`` was called on it."""
