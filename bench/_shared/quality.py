"""What the quality benchmarks share: the package's training defaults and per-user scoring.

``peers.py`` and ``synth_ceiling.py`` score every system the same way: raymm's evaluator, per user,
at :data:`K`.
"""

from __future__ import annotations

import numpy as np

from raymm.config import TrainConfig
from raymm.eval.evaluate import EvalSetup, per_user_metrics
from raymm.recommend.history import EvalUsers
from raymm.recommend.scorers import Scorer

#: The cut-off of every reported metric (Recall@20, NDCG@20).
K = 20
#: The package's training defaults, over configs/quickstart.yaml's (3 epochs: the quickstart's time
#: budget, which stopped ML-100k before validation peaked; the package's 8 did not).
PACKAGE_TRAINING = tuple(
    f"train.{key}={TrainConfig.model_fields[key].default}" for key in ("epochs", "patience")
)


def validation_ndcg(scorer: Scorer, setup: EvalSetup) -> float:
    """Mean NDCG@K of ``scorer`` over the validation users."""
    return float(score(scorer, setup, setup.validation)[1][f"ndcg@{K}"].mean())


def score(scorer: Scorer, setup: EvalSetup, users: EvalUsers) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """(user positions, metric -> per-user values) of ``scorer`` on ``users`` at K, full ranking."""
    return per_user_metrics(scorer, users, (K,), setup.catalog.n_items)
