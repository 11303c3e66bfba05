"""raymm: a distributed, streaming, multimodal recommender on Ray.

The public API is small; everything else may change:

* :func:`load_config`: the typed configuration (YAML + dotted overrides);
* :func:`extract`, :func:`train`, :func:`train_ranker`, :func:`evaluate`: the stages;
* :func:`quickstart`: the whole job end to end;
* :func:`load_model`: a trained artifact as a :class:`~raymm.recommend.recommender.Recommender`
  whose ``recommend(history, k)`` answers as serving does.

Names are imported lazily, so ``import raymm`` stays light (no Ray, no torch until used).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

#: Public name -> "module:attribute".
_EXPORTS = {
    "load_config": "raymm.config:load_config",
    "extract": "raymm.features.pipeline:extract",
    "train": "raymm.train.trainer:train",
    "train_ranker": "raymm.train.rank_trainer:train_ranker",
    "evaluate": "raymm.eval.evaluate:evaluate",
    "quickstart": "raymm.workflows.quickstart:quickstart",
    "load_model": "raymm.recommend.recommender:load_model",
    "Recommender": "raymm.recommend.recommender:Recommender",
}

__all__ = [  # noqa: RUF022 (the version first, then the API in reading order)
    "__version__",
    "load_config",
    "extract",
    "train",
    "train_ranker",
    "evaluate",
    "quickstart",
    "load_model",
    "Recommender",
]

if TYPE_CHECKING:
    from raymm.config import load_config
    from raymm.eval.evaluate import evaluate
    from raymm.features.pipeline import extract
    from raymm.recommend.recommender import Recommender, load_model
    from raymm.train.rank_trainer import train_ranker
    from raymm.train.trainer import train
    from raymm.workflows.quickstart import quickstart


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'raymm' has no attribute {name!r}")
    module, attribute = _EXPORTS[name].split(":")
    return getattr(importlib.import_module(module), attribute)
