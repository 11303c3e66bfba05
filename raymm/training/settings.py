"""The training stage's configuration: the ``train`` section (the Ray Train run and the
optimisation), and the metrics early stopping may follow.

Plain pydantic on :class:`raymm.settings_base.StrictModel`, so :mod:`raymm.config` assembles this
section; the cross-section check of ``train.val_metric`` against ``evaluate.ks`` lives there.
"""

from __future__ import annotations

from pydantic import Field

from raymm.settings_base import StrictModel

__all__ = ["VALIDATION_METRICS", "TrainConfig"]

#: Metrics early stopping can follow (computed by raymm.eval.metrics at every K of evaluate.ks).
VALIDATION_METRICS: tuple[str, ...] = ("recall", "ndcg", "hit_rate", "mrr", "precision", "f1", "coverage")


class TrainConfig(StrictModel):
    """``raymm train``: the Ray Train run (workers, epochs, checkpoints, failure handling).

    ``storage_path`` (default ``<out>/train``) holds checkpoints, a local path or any pyarrow
    filesystem URI reachable from every worker. What a user is (history window, events that
    count) is the model's ``model.user_state``. ``val_metric`` is ``<metric>@<K>`` with K one of
    ``evaluate.ks``.

    ``validation_users`` caps the validation users (a seeded sample when there are more) that
    early stopping and the choices made on validation rank: the fallback's half-life and
    shrinkage (54 full-catalog passes), the ranker's retrieval weight (8), and evaluation's
    ``validation_ndcg``. Each pass costs users x items, so with every user the large benchmark's
    choices alone would take hours on a small machine (bench/scale.py); a few thousand users
    hold the standard error of NDCG@20 well below the differences those choices act on. None
    ranks them all.
    """

    epochs: int = Field(8, gt=0)
    batch_size: int = Field(256, gt=1)
    lr: float = Field(2e-3, gt=0)
    weight_decay: float = Field(1e-5, ge=0)
    num_workers: int = Field(1, gt=0)
    use_gpu: bool = False
    cpus_per_worker: float = Field(1.0, gt=0)
    #: torch threads per worker; None: cpus_per_worker rounded down (at least 1). Set it above the
    #: reservation when Ray Data tasks need the remaining CPUs only between epochs.
    torch_threads: int | None = Field(None, gt=0)
    patience: int = Field(2, gt=0)
    val_metric: str = "ndcg@20"
    max_failures: int = Field(2, ge=0)
    storage_path: str | None = None
    validation_users: int | None = Field(4096, gt=0)
    #: Every this many steps, and after each validation, the training loop hands freed memory back
    #: to the OS (Arrow's pool's ``release_unused``, glibc's ``malloc_trim``): a step's tensors
    #: change shape with the batch's unique items, and both allocators keep what they freed.
    #: bench/train_memory.py measures the worker's memory with and without. None: never.
    heap_trim_every: int | None = Field(50, gt=0)
