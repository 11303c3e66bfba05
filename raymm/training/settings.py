"""The training stage's configuration: the ``train`` section (the optimisation, and under
``train.run`` how the Ray Train run executes), and the metrics early stopping may follow.

Plain pydantic on :class:`raymm.settings_base.StrictModel`, so :mod:`raymm.config` assembles this
section; the cross-section check of ``train.val_metric`` against ``evaluate.ks`` lives there.
"""

from __future__ import annotations

from pydantic import Field

from raymm.settings_base import StrictModel

__all__ = ["VALIDATION_METRICS", "TrainConfig", "TrainRunConfig"]

#: Metrics early stopping can follow (computed by raymm.eval.metrics at every K of evaluate.ks).
VALIDATION_METRICS: tuple[str, ...] = ("recall", "ndcg", "hit_rate", "mrr", "precision", "f1", "coverage")


class TrainRunConfig(StrictModel):
    """How a Ray Train run executes (``train.run``): workers, their resources, checkpoint storage,
    restarts and heap trimming. The two-tower run and the ranker's (``raymm train --stage rank``,
    which is handed these settings) both follow it.

    ``storage_path`` (default ``<out>/train``) holds checkpoints, a local path or any pyarrow
    filesystem URI reachable from every worker.

    Apart from ``torch_threads``, none of these change what a run learns, so an interrupted run
    resumes across a change to them (:func:`raymm.training.trainer.run_key`).
    """

    #: Ray Train workers (data-parallel DDP processes).
    num_workers: int = Field(1, gt=0)
    #: Give each worker a GPU and train on it.
    use_gpu: bool = False
    #: CPUs Ray reserves per worker.
    cpus_per_worker: float = Field(1.0, gt=0)
    #: torch threads per worker; None: cpus_per_worker rounded down (at least 1). Set it above the
    #: reservation when Ray Data tasks need the remaining CPUs only between epochs.
    torch_threads: int | None = Field(None, gt=0)
    #: Worker failures Ray Train restarts the run after (from the latest checkpoint) before giving up.
    max_failures: int = Field(2, ge=0)
    storage_path: str | None = None
    #: Every this many steps, and after each validation, the training loop hands freed memory back
    #: to the OS (Arrow's pool's ``release_unused``, glibc's ``malloc_trim``): a step's tensors
    #: change shape with the batch's unique items, and both allocators keep what they freed.
    #: bench/train_memory.py measures the worker's memory with and without. None: never.
    heap_trim_every: int | None = Field(50, gt=0)


class TrainConfig(StrictModel):
    """``raymm train``: the optimisation of the two-tower model (epochs, batches, optimiser,
    early stopping); how the Ray Train run executes is ``train.run``.

    What a user is (history window, events that count) is the model's ``model.user_state``.
    ``val_metric`` is ``<metric>@<K>`` with K one of ``evaluate.ks``; early stopping and the best
    epoch follow it.

    ``validation_users`` caps the validation users (a seeded sample when there are more) that
    early stopping and the choices made on validation rank: the fallback's half-life and
    shrinkage (54 full-catalog passes), the ranker's retrieval weight (8), and evaluation's
    ``validation_ndcg``. Each pass costs users x items, so with every user the large benchmark's
    choices alone would take hours on a small machine (bench/scale.py); a few thousand users
    hold the standard error of NDCG@20 well below the differences those choices act on. None
    ranks them all.
    """

    #: Most epochs to train; early stopping (``patience``) may end sooner.
    epochs: int = Field(8, gt=0)
    #: Training examples per step, per worker.
    batch_size: int = Field(256, gt=1)
    #: AdamW learning rate.
    lr: float = Field(2e-3, gt=0)
    #: AdamW weight decay.
    weight_decay: float = Field(1e-5, ge=0)
    #: Stop after this many epochs without a better ``val_metric``.
    patience: int = Field(2, gt=0)
    #: Most recent positive items in a training example's user state, capped at
    #: ``model.user_state.max_history`` (the window evaluation and serving pool); None: that window.
    #: Every example holds its window, so the examples' memory and the user tower's work per step
    #: grow with it. 50 under a served window of 100: on the synthetic benchmark (3 seeds, blend
    #: chosen on validation) served validation NDCG@20 0.0406 against 0.0411 training on 100, test
    #: Recall/NDCG@20 0.0733/0.0405 against 0.0689/0.0393; 20 gave 0.0394 on validation (one seed).
    history_window: int | None = Field(50, gt=0)
    val_metric: str = "ndcg@20"
    validation_users: int | None = Field(4096, gt=0)
    run: TrainRunConfig = Field(default_factory=TrainRunConfig)
