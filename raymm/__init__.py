"""raymm: a distributed, streaming, multimodal recommender on Ray.

The public API is small; everything else may change:

* :func:`load_config`: the typed configuration (YAML + dotted overrides);
* :func:`extract`, :func:`train`, :func:`train_ranker`, :func:`evaluate`: the stages, the functions
  ``raymm extract|train|evaluate`` call, with paths by keyword (``data=``, ``features=``, ``out=``,
  ``model=``) whose defaults come from the config (``<out>/data`` and so on); each returns a typed
  result that prints its summary with :func:`raymm.console.print_result`;
* :func:`quickstart`: the whole job end to end;
* :func:`build_app`: the Ray Serve application (``serve run``, ``serve deploy``, ``raymm serve``);
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
    "extract": "raymm.workflows.extract:extract",
    "train": "raymm.workflows.train:train",
    "train_ranker": "raymm.workflows.train:train_ranker",
    "evaluate": "raymm.workflows.evaluate:evaluate",
    "quickstart": "raymm.workflows.quickstart:quickstart",
    "build_app": "raymm.serve.app:build_app",
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
    "build_app",
    "load_model",
    "Recommender",
]

if TYPE_CHECKING:
    from raymm.config import load_config
    from raymm.recommend.recommender import Recommender, load_model
    from raymm.serve.app import build_app
    from raymm.workflows.evaluate import evaluate
    from raymm.workflows.extract import extract
    from raymm.workflows.quickstart import quickstart
    from raymm.workflows.train import train, train_ranker


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'raymm' has no attribute {name!r}")
    module, attribute = _EXPORTS[name].split(":")
    return getattr(importlib.import_module(module), attribute)
