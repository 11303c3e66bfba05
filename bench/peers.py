"""raymm beside the systems users would otherwise pick: same split, same evaluator, same tuning budget.

For one dataset (a raymm dataset directory and its features):

1. **Export** the split with ``raymm data export --format mmrec`` (:func:`raymm.data.export.export_mmrec`)
   plus what Cornac needs: ``positives.tsv`` (the interactions raymm counts as positives,
   ``model.user_state.events``, per split) and ``item_text.tsv``.
2. **Peers** run in their own virtualenv, ``bench/.venv-peers`` (made on first use:
   :data:`PEERS_REQUIREMENTS`; Cornac 3.0.1, the newest on PyPI, holds every peer, SASRec and
   GRU4Rec included), so raymm's dependencies stay clean: MostPop, BPR, LightGCN, VBPR (on the
   image features, or the text features where there are no images), CTR (Collaborative Topic
   Regression, Cornac's text-aware model that needs no TensorFlow; CDL needs TensorFlow, which
   Cornac does not install), EASE, ItemKNN (implicit item-based kNN: Cornac's ``ItemKNN`` is
   degenerate on implicit data, see ``bench/peers_cornac.py``) and GRU4Rec, the sequential peer
   (trained on each user's positives in time order, it predicts what follows the history the
   evaluated period starts from; SASRec the same way with ``--systems``, not by default: Cornac
   trains it one encoder pass per training target, 10+ minutes a fit here). ``bench/peers_cornac.py`` fits them and writes score matrices.
3. **raymm** trains through Ray Train exactly as ``raymm train`` does, with the package's
   training defaults (``train.epochs`` 8, ``train.patience`` 2; the quickstart config's 3
   epochs are for the quickstart's time budget and stopped ML-100k before validation peaked)
   on the quickstart config's resources; its served recommender (the personal scorer with its
   popularity fallback) is what is scored. Its ablations and the training-free content
   baseline run beside it.
4. **One evaluator, two tables.** Every system, raymm's and the peers', is ranked by raymm's
   evaluator (:mod:`raymm.eval.evaluate`): full ranking, seen items excluded, on the identical
   users, in two tables:

   * **blended**: every system's scores blended with recent popularity exactly as raymm's
     served scorer blends its own (:class:`~raymm.recommend.scorers.FallbackScorer`: score =
     a(h) primary + (1 - a(h)) popularity, a(h) = h / (h + shrinkage), h the user's history
     entries), the half-life and shrinkage chosen per system on validation over the same grids
     (``HALF_LIFE_GRID_DAYS`` x ``SHRINKAGE_GRID``), popularity counted on the training split
     for validation and on train+validation for test. A peer's scores are first normalised per
     user (:func:`normalise_rows`: its top item 1, its median item 0) so that one shrinkage
     grid covers every system (scaling scores by c is dividing the shrinkage by c);
     raymm's personal scorer is blended as it is served, with the blend training chose.
   * **plain**: no system blended: each peer's own scores; raymm's personal scorer (two-tower +
     item-item + content) with its weights, the item-item ``l2`` and recency decay chosen on
     plain validation by raymm's own search (:func:`plain_personal`), as a peer's setting is.

   In both, a user a system cannot score (a peer never saw them: no positive before the
   evaluated period; raymm: an empty history) gets recent popularity's answer: in the blended
   table with the system's own blend (a(0) = 0), in the plain table with the half-life chosen
   for recent popularity alone on validation. Rows also hold "recent popularity" (that
   half-life), "raymm (default)" (:data:`RAYMM_GRID` [0], the shipped defaults, on every dataset)
   beside the tuned raymm.
5. **Tuning on validation only.** Each system gets the same small budget (the first
   ``--grid-size`` settings of :data:`PEER_GRID` / :data:`RAYMM_GRID`: 2 by default, 4 at most),
   fitted on train and scored on the validation users (history from train; popularity for
   fallbacks fitted on train). Each table takes each system's best setting by its own
   validation NDCG@20 (blended: the blended score, raymm's served scorer's; plain: the plain
   score), refit on train+validation (peers; raymm's histories already read train+validation)
   and scored on test: raymm and the table's best peer on validation with every seed of
   ``--seeds`` (mean +- sd), the other peers with the first (the time budget: one LightGCN fit
   takes 2-3 minutes here).
6. **Statistics.** raymm against the best peer and against popularity: per-user NDCG@20 and
   Recall@20 (each averaged over the seeds) in a paired sign-flip test and a Wilcoxon test
   (:mod:`raymm.eval.stats`); an ordering "holds" only when p < 0.05.
7. **Cross-check**: BPR's final model is also scored by Cornac's own ``ranking_eval``, on the users
   and items Cornac knows, and raymm's evaluator is run on exactly those; the two must agree
   within 2% relative.
8. On the synthetic benchmark, the **oracle** (the generator's true affinity, saved at synth time
   outside the training inputs) bounds every system: each is reported as a fraction of it.

Prints one JSON line (the report; each system's test means go to stderr) and writes
``bench/results/peers.<name>.json``; every dataset's
summary is merged into ``bench/results/peers.json``. Every system's per-user test metrics go to
``<work>/per_user.parquet`` (user_id, system, table, seed, history_length, recall@20, ndcg@20)
and its per-test-item hits to ``<work>/hits.parquet`` (user_id, item_id, item_count,
history_length, system, table, seed, hit): ``bench/peers_breakdown.py`` reads them.

    .venv/bin/python bench/peers.py --dataset synthetic      # out/quickstart (small), made if absent
    .venv/bin/python bench/peers.py --dataset ml100k --grid-size 4   # bench/fetch_ml100k.py
    .venv/bin/python bench/peers.py --data DIR --features DIR --name NAME [--set key=value ...]
    .venv/bin/python bench/peers.py --dataset ml100k --cornac-only   # the peers' fits alone (cached)
    .venv/bin/python bench/peers.py --dataset ml100k --systems EASE,GRU4Rec,SASRec --quick
    .venv/bin/python bench/peers.py --quick   # smoke run (make bench QUICK=1): tiny facet dataset, quick peers

``--quick``: the first grid setting of every system, one seed, no ablation, raymm for one epoch;
without ``--dataset`` or ``--data``, the ``tiny`` benchmark with facet features
(``_shared.facets``) and :data:`QUICK_SYSTEMS`. It writes ``peers.<name>.quick.json`` and merges
nothing into ``peers.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import torch
from _shared import BASE_CONFIG, QUICKSTART, RESULTS, ROOT, ensure_quickstart, finish, log
from _shared.facets import tiny_facet_dataset
from _shared.quality import PACKAGE_TRAINING, K, score, validation_ndcg
from torch import Tensor

from raymm.config import RaymmConfig, load_config
from raymm.data.dataset import SPLITS, load_dataset
from raymm.data.export import export_mmrec
from raymm.eval.evaluate import EvalSetup, eval_setup, per_user_metrics, served_scorer
from raymm.eval.oracle import OracleScorer, load_oracle
from raymm.eval.stats import mean_sd, paired_test
from raymm.models.artifact import load_artifact
from raymm.models.config import CollabConfig
from raymm.recommend.blend import (
    COLLAB_WEIGHT_GRID,
    BlendSettings,
    choose_blend_settings,
    fit_content,
    fit_served_retriever,
    served_retriever,
)
from raymm.recommend.collab import CollaborativeScorer
from raymm.recommend.history import EvalUsers, item_counts, positive_events
from raymm.recommend.itemsets import ItemSets
from raymm.recommend.scorers import (
    HALF_LIFE_GRID_DAYS,
    ContentScorer,
    DotProductScorer,
    FallbackScorer,
    PopularityScorer,
    PrecomputedScorer,
    Scorer,
    TwoTowerScorer,
    history_weight,
)
from raymm.recommend.topk import TopK, top_k_of_scores

BENCH = "peers"
#: The target of design.md section 4 this benchmark measures: `make bench` runs it.
DESIGN_TARGET = "Quality"
KS = (K,)
METRICS = (f"recall@{K}", f"ndcg@{K}", f"hit_rate@{K}")
TABLES = ("blended", "plain")
#: Peers bench/peers_breakdown.py sets raymm against (those present).
BREAKDOWN_PEERS = ("LightGCN", "BPR", "EASE", "ItemKNN", "GRU4Rec", "SASRec")
PEERS_VENV = ROOT / "bench" / ".venv-peers"
#: Cornac 3.0.1 is the newest release on PyPI (2026-12) and holds every peer, SASRec and GRU4Rec
#: included. Torch: the CPU build where a local wheel offers it (the peers run on CPU); DGL 2.1.0
#: for LightGCN, whose GraphBolt modules import pandas, PyYAML and pydantic at import time.
PEERS_REQUIREMENTS = (
    "cornac==3.0.1",
    "torch==2.13.0",
    "dgl==2.1.0",
    "pandas==3.1.1",
    "PyYAML==6.0.4",
    "pydantic==2.14.4",
)
#: DGL 2.1.0 imports torchdata.datapipes, which torchdata 0.10 removed; installed without its
#: torch pin.
PEERS_NO_DEPS = ("torchdata==0.9.0",)
CROSS_CHECK_SYSTEM = "BPR"
CROSS_CHECK_TOLERANCE = 0.02

#: The same small budget for every system: the first ``--grid-size`` settings of each list (2 by
#: default, at most 4), chosen on validation. The lists put the likeliest settings first.
PEER_GRID: dict[str, list[dict[str, Any]]] = {
    "MostPop": [{}],
    "BPR": [
        {"k": k, "lambda_reg": reg, "max_iter": 200, "learning_rate": 0.01}
        for k in (64, 32)
        for reg in (0.001, 0.01)
    ],
    # Cornac's LightGCN runs DGL's message passing on every batch: 14 s an epoch at batch 1,024 on
    # ml-100k here, 3.7 s at 4,096; so batches of 4,096 and 25 epochs (about 100 s a fit).
    "LightGCN": [
        {
            "emb_size": 64,
            "num_layers": layers,
            "lambda_reg": 1e-4,
            "num_epochs": 25,
            "batch_size": 4096,
            "learning_rate": lr,
        }
        for lr in (0.01, 0.03)
        for layers in (2, 3)
    ],
    # VBPR is a torch loop over mini-batches: batches of 1,024 and 20 epochs (~1 minute a fit).
    "VBPR": [
        {"k": k, "k2": k, "n_epochs": 20, "batch_size": 1024, "learning_rate": 0.01, "lambda_w": w}
        for k in (16, 32)
        for w in (0.01, 0.1)
    ],
    "CTR": [{"k": k, "lambda_u": 0.01, "lambda_v": v, "max_iter": 30} for k in (32, 64) for v in (0.01, 1.0)],
    # EASE's one parameter, the L2 weight (Cornac's default 500 first); a fit is one item x item
    # inverse (6 s on ml-100k here).
    "EASE": [{"lamb": lamb} for lamb in (500.0, 100.0, 2000.0, 50.0)],
    # Implicit item kNN (bench/peers_cornac.py's ItemKNN): neighbours kept and similarity.
    "ItemKNN": [
        {"k": 100, "similarity": "cosine"},
        {"k": 200, "similarity": "cosine"},
        {"k": 100, "similarity": "jaccard"},
        {"k": 50, "similarity": "cosine"},
    ],
    # SASRec: Cornac trains it on every prefix of every user's sequence (one full encoder pass
    # per training target, not the paper's all-positions pass), so an epoch costs minutes here:
    # histories of 20 items, 64 dimensions, epochs and size on the grid.
    "SASRec": [
        {
            "embedding_dim": dim,
            "n_epochs": epochs,
            "max_len": 20,
            "num_blocks": 2,
            "num_heads": 1,
            "dropout": 0.2,
            "learning_rate": 0.001,
            "batch_size": 512,
            "n_sample": 256,
            "loss": "ce",
        }
        for dim, epochs in ((64, 5), (64, 10), (32, 5), (128, 5))
    ],
    # GRU4Rec (session-parallel GRU, sampled cross-entropy): the default sequential peer, about
    # 30 s an epoch on ml-100k here at 512 parallel sequences (10 epochs at 256 took over 14
    # minutes under load); size and epochs on the grid.
    "GRU4Rec": [
        {
            "layers": [size],
            "n_epochs": epochs,
            "batch_size": 512,
            "learning_rate": 0.05,
            "momentum": 0.0,
            "n_sample": 512,
            "loss": "cross-entropy",
            "dropout_p_hidden": 0.0,
        }
        for size, epochs in ((64, 5), (128, 5), (64, 10), (128, 10))
    ],
}
#: Peers run by default: SASRec only on request (--systems), its fits take 10+ minutes here.
DEFAULT_SYSTEMS = tuple(system for system in PEER_GRID if system != "SASRec")
#: ``--quick``'s peers: those that fit in seconds (LightGCN's DGL and the sequential models take minutes).
QUICK_SYSTEMS = ("MostPop", "BPR", "EASE", "ItemKNN")
#: ``--quick``'s raymm training: one epoch, the facet dataset's batch size.
QUICK_TRAINING = ("train.epochs=1", "train.batch_size=128")
#: raymm's grid (config overrides on the dataset's base config): the default and three changes.
RAYMM_GRID: list[tuple[str, ...]] = [
    (),
    ("train.epochs=10", "train.patience=3"),
    ("train.lr=0.005", "train.epochs=10", "train.patience=3"),
    ("model.item_id_embeddings=false",),
]
#: raymm's ablation variants per dataset kind, trained with the default settings and evaluated
#: beside the tuned model (one seed; bench/quality_synth.py runs them over seeds).
SYNTHETIC_ABLATION: dict[str, tuple[str, ...]] = {
    "text": ("model.modalities=[text]",),
    "concat": ("model.align.method=none", "model.fusion.method=concat"),
}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dataset", choices=["synthetic", "ml100k"], help="a prepared dataset")
    parser.add_argument("--data", type=Path, help="a raymm dataset directory (with --features)")
    parser.add_argument("--features", type=Path, help="its features directory")
    parser.add_argument("--name", help="result name (default: the dataset's)")
    parser.add_argument("--set", action="append", default=[], help="base config override, key=value")
    parser.add_argument("--seeds", default=None, help="seeds of the final runs (default 0,1,2; --quick 0)")
    parser.add_argument(
        "--systems",
        default=None,
        help=f"peers to run, of {', '.join(PEER_GRID)} (default {','.join(DEFAULT_SYSTEMS)}; "
        f"--quick {','.join(QUICK_SYSTEMS)})",
    )
    parser.add_argument(
        "--cornac-only",
        action="store_true",
        help="fit the peers (grid on validation, finals on test; cached) and stop before raymm",
    )
    parser.add_argument(
        "--work", type=Path, default=None, help="scratch directory (default out/peers/<name>)"
    )
    parser.add_argument("--no-ablation", action="store_true", help="skip raymm's ablation variants")
    parser.add_argument("--grid-size", type=int, default=2, help="settings tried per system (raymm too), 1-4")
    parser.add_argument(
        "--reuse",
        action="store_true",
        help="keep raymm models this script trained before with the same config (Cornac scores are always kept)",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="smoke run: first grid setting of each system only, one seed, no ablation, raymm for one "
        "epoch; without --dataset/--data the tiny benchmark with facet features and the quick peers; "
        "writes *.quick.json",
    )
    parser.add_argument("--out", type=Path, default=None, help="result JSON path")
    parser.add_argument(
        "--table", action="store_true", help="print the README tables from peers.json, redraw peers.png"
    )
    args = parser.parse_args(argv)
    args.seeds = args.seeds or ("0" if args.quick else "0,1,2")
    tiny = args.quick and args.dataset is None and args.data is None
    args.systems = args.systems or ",".join(QUICK_SYSTEMS if tiny else DEFAULT_SYSTEMS)
    args.no_ablation = args.no_ablation or args.quick
    return args


# --- the peers' virtualenv ------------------------------------------------------------------


def peers_python() -> Path:
    """The peers virtualenv's Python, created and filled on first use."""
    python = PEERS_VENV / "bin" / "python"
    marker = PEERS_VENV / ".raymm-peers-ready"
    wanted = " ".join(PEERS_REQUIREMENTS + PEERS_NO_DEPS) + "\n"
    if marker.is_file() and marker.read_text() == wanted:
        return python
    if not python.is_file():
        log(BENCH, f"creating {PEERS_VENV.relative_to(ROOT)}")
        subprocess.run([sys.executable, "-m", "venv", str(PEERS_VENV)], check=True)
    pip = [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    log(BENCH, f"installing {', '.join(PEERS_REQUIREMENTS)} into the peers virtualenv (minutes)")
    subprocess.run([*pip, *PEERS_REQUIREMENTS], check=True, stdout=sys.stderr)
    subprocess.run([*pip, "--no-deps", *PEERS_NO_DEPS], check=True, stdout=sys.stderr)
    _skip_graphbolt(python)
    marker.write_text(wanted)
    return python


def _skip_graphbolt(python: Path) -> None:
    """DGL 2.1.0, the last on PyPI, ships its GraphBolt library for torch <= 2.2 only and refuses
    to import without it; Cornac's LightGCN never uses GraphBolt, so its load becomes optional."""
    found = subprocess.run(
        [
            str(python),
            "-c",
            "import importlib.util as u; print(u.find_spec('dgl').submodule_search_locations[0])",
        ],
        check=True,
        capture_output=True,
        text=True,
    )
    init = Path(found.stdout.strip()) / "graphbolt" / "__init__.py"
    source = init.read_text()
    if "\n\nload_graphbolt()\n" in source:
        init.write_text(
            source.replace(
                "\n\nload_graphbolt()\n",
                "\n\ntry:  # raymm peers: LightGCN does not use GraphBolt\n    load_graphbolt()\n"
                "except (FileNotFoundError, ImportError):\n    pass\n",
                1,
            )
        )


# --- export ---------------------------------------------------------------------------------


class Export:
    """The exported split: MMRec files plus positives and item texts, and the id mappings."""

    def __init__(self, data: Path, features: Path, root: Path, config: RaymmConfig) -> None:
        self.root = root
        summary = export_mmrec(str(data), str(root), name="raymm")
        dataset = load_dataset(str(data), tables=())
        self.user_ids = _mapping(root / "u_id_mapping.csv", "user_id")
        self.item_ids = _mapping(root / "i_id_mapping.csv", "asin")
        user_index = {u: i for i, u in enumerate(self.user_ids)}
        rows = []
        for label, split in enumerate(SPLITS):
            table = positive_events(dataset.interactions(split), config.model.user_state.events)
            users = pc.index_in(table.column("user_id"), value_set=pa.array(self.user_ids))
            items = pc.index_in(table.column("item_id"), value_set=pa.array(self.item_ids))
            rows.append(
                pa.table(
                    {
                        "userID": users,
                        "itemID": items,
                        "x_label": pa.repeat(pa.scalar(label, pa.int64()), table.num_rows),
                        # Milliseconds since the epoch: the order sequential peers read.
                        "ts": pc.cast(pc.cast(table.column("ts"), pa.timestamp("ms")), pa.int64()),
                    }
                )
            )
        positives = pa.concat_tables(rows)
        _write_tsv(positives, root / "positives.tsv")
        texts = dataset.items.select(["item_id", "text"])
        order = pc.index_in(texts.column("item_id"), value_set=pa.array(self.item_ids))
        cleaned = pc.replace_substring_regex(pc.fill_null(texts.column("text"), ""), r"[\t\r\n]+", " ")
        _write_tsv(pa.table({"itemID": order, "text": cleaned}), root / "item_text.tsv")
        self.features = list(summary["features"])
        if not self.features:
            # Extracted features live beside the dataset, not in it: write them in MMRec's layout.
            self.features = self._write_features(data, features)
            summary["features"] = self.features
        (root / "export.json").write_text(json.dumps(summary, default=str))
        self.summary = summary
        self.user_index = user_index

    def _write_features(self, data: Path, features: Path) -> list[str]:
        """``<modality>_feat.npy`` (row i = itemID i, zeros where missing) from a features directory."""
        from raymm.data.importers.mmrec import FEATURE_FILES
        from raymm.features.store import load_features

        table = load_features(str(features))
        index = pc.index_in(table.column("item_id"), value_set=pa.array(self.item_ids)).to_numpy(
            zero_copy_only=False
        )
        written = []
        for modality, file in FEATURE_FILES.items():
            if modality not in table.column_names:
                continue
            column = table.column(modality).combine_chunks()
            valid = column.is_valid().to_numpy(zero_copy_only=False)
            dim = column.type.list_size
            vectors = column.flatten().to_numpy(zero_copy_only=False).reshape(-1, dim)
            matrix = np.zeros((len(self.item_ids), dim), dtype=np.float32)
            rows = index[valid]
            known = ~np.isnan(rows.astype(np.float64)) if rows.dtype.kind == "f" else rows >= 0
            matrix[rows[known].astype(np.int64)] = vectors[known]
            np.save(self.root / file, matrix)
            written.append(modality)
        return written

    def users(self, ids: Sequence[str]) -> list[int]:
        return [self.user_index[str(u)] for u in ids if str(u) in self.user_index]

    def catalog_columns(self, setup: EvalSetup) -> np.ndarray:
        """(exported items,) catalog row of each MMRec itemID (-1: not in the catalog)."""
        return setup.catalog.positions(pa.array(self.item_ids))


def _mapping(path: Path, column: str) -> list[str]:
    table = pacsv.read_csv(
        path,
        parse_options=pacsv.ParseOptions(delimiter="\t", quote_char=False),
        convert_options=pacsv.ConvertOptions(column_types={column: pa.string()}),
    )
    return table.column(column).to_pylist()


def _write_tsv(table: pa.Table, path: Path) -> None:
    with path.open("w") as handle:
        handle.write("\t".join(table.column_names) + "\n")
    with path.open("ab") as handle:
        pacsv.write_csv(
            table, handle, pacsv.WriteOptions(delimiter="\t", quoting_style="none", include_header=False)
        )


# --- peers ----------------------------------------------------------------------------------


def run_cornac(export: Export, jobs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Fit ``jobs`` in the peers' virtualenv; each job's score-file metadata by id."""
    pending = [job for job in jobs if not (export.root / "scores" / f"{job['id']}.json").is_file()]
    if pending:
        (export.root / "jobs.json").write_text(json.dumps(pending))
        environment = {**os.environ, "OMP_NUM_THREADS": str(os.cpu_count() or 1)}
        environment.pop("PYTHONPATH", None)
        started = time.perf_counter()
        subprocess.run(
            [str(peers_python()), str(ROOT / "bench" / "peers_cornac.py"), str(export.root)],
            check=True,
            env=environment,
            stdout=sys.stderr,
        )
        log(BENCH, f"{len(pending)} Cornac fits in {time.perf_counter() - started:.0f}s")
    return {job["id"]: json.loads((export.root / "scores" / f"{job['id']}.json").read_text()) for job in jobs}


def peer_scores(
    export: Export, setup: EvalSetup, job_id: str, meta: dict[str, Any]
) -> tuple[list[str], np.ndarray]:
    """A job's (user ids, (users, catalog items) scores); catalog items the peer never scored get
    -3e38, below every scored one."""
    matrix = np.load(export.root / "scores" / f"{job_id}.npy")
    columns = export.catalog_columns(setup)
    scores = np.full((matrix.shape[0], setup.catalog.n_items), np.float32(-3.0e38), dtype=np.float32)
    inside = columns >= 0
    scores[:, columns[inside]] = matrix[:, inside]
    return [export.user_ids[u] for u in meta["users"]], scores


def peer_scorer(
    export: Export, setup: EvalSetup, job_id: str, meta: dict[str, Any], popularity: PopularityScorer
) -> PrecomputedScorer:
    """A job's scores as a raymm scorer over the catalog; unknown users get ``popularity``."""
    user_ids, scores = peer_scores(export, setup, job_id, meta)
    return PrecomputedScorer(job_id, user_ids, scores, fallback=popularity)


def peer_matrix(export: Export, setup: EvalSetup, job_id: str, meta: dict[str, Any]) -> MatrixScores:
    """A job's scores normalised per user (:func:`normalise_rows`), ready to blend."""
    user_ids, scores = peer_scores(export, setup, job_id, meta)
    return MatrixScores(job_id, user_ids, normalise_rows(scores))


def peer_jobs(
    export: Export, setup: EvalSetup, systems: Sequence[str], features: str | None
) -> list[dict[str, Any]]:
    validation_users = export.users(setup.validation.user_ids)
    jobs = []
    for system in systems:
        if system == "VBPR" and features is None:
            continue
        for index, params in enumerate(PEER_GRID[system]):
            jobs.append(
                {
                    "id": f"{system}-g{index}-{_digest(params)}-val",
                    "system": system,
                    "params": params,
                    "fit": ["train"],
                    "users": validation_users,
                    "seed": 0,
                    "features": features,
                }
            )
    return jobs


def _digest(params: dict[str, Any]) -> str:
    """A short name for a parameter setting, so a changed grid never reuses old scores."""
    import hashlib

    return hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()[:8]


# --- raymm ----------------------------------------------------------------------------------


def train_raymm(
    config: RaymmConfig, overrides: Sequence[str], data: Path, features: Path, out: Path, reuse: bool = False
) -> float:
    """One ``raymm train`` run (Ray Train) with ``overrides``; its wall seconds. With ``reuse``, a model
    this script trained before with exactly this config is kept (and its recorded seconds returned)."""
    from raymm.config import apply_overrides, config_from_dict
    from raymm.training.trainer import train

    storage = out.parent / f"{out.name}-checkpoints"
    document = config.model_dump(mode="json", by_alias=True)
    variant = config_from_dict(
        apply_overrides(document, [*overrides, f"train.run.storage_path={storage}"]), "peers raymm"
    )
    stamp = out.parent / f"{out.name}.run.json"
    key = variant.model_dump(mode="json", by_alias=True)
    if reuse and stamp.is_file() and (out / "manifest.json").is_file():
        recorded = json.loads(stamp.read_text())
        if recorded["config"] == key:
            log(BENCH, f"reusing {out.name} (same config, trained {recorded['seconds']:.0f}s)")
            return float(recorded["seconds"])
    for path in (storage, out):
        if path.exists():
            shutil.rmtree(path)
    started = time.perf_counter()
    train(variant, str(data), str(features), str(out))
    shutil.rmtree(storage, ignore_errors=True)
    seconds = time.perf_counter() - started
    stamp.write_text(json.dumps({"config": key, "seconds": seconds}))
    return seconds


def raymm_scorers(model_dir: Path, setup: EvalSetup) -> tuple[FallbackScorer, FallbackScorer]:
    """The artifact's served recommender for validation (what the blend knows counted on the
    training split) and test (train+validation), with the fallback settings training chose on
    validation (:func:`~raymm.eval.evaluate.served_scorer`). ``served.primary`` is raymm's personal
    scorer: raymm without the fallback."""
    artifact = load_artifact(str(model_dir), expected_dims=setup.catalog.dims)
    test, _ = served_scorer(artifact, setup, KS)
    # Its item-item part and popularity fitted on the training split only, for validation users.
    validation, _ = served_scorer(artifact, setup, KS, context=setup.train_context)
    return validation, test


#: The item-item weights raymm's plain choice tries (relative to the two-tower's spread): the
#: blend's grid, then further up. Without popularity, MovieLens-100k's plain validation wants the
#: item-item part far above a two-tower trained on 943 users (bench/results/plain_ceiling.json).
PLAIN_COLLAB_GRID = (*COLLAB_WEIGHT_GRID, 16.0, 32.0, 64.0, 256.0)


def plain_personal(
    model_dir: Path, setup: EvalSetup, train_popularity: PopularityScorer, popularity: PopularityScorer
) -> tuple[BlendSettings, float, FallbackScorer]:
    """raymm in the plain table: the artifact's personal part (two-tower + item-item + content)
    with its weights, the item-item ``l2`` and recency decay chosen on *plain* validation by
    raymm's own search (:func:`~raymm.recommend.blend.choose_blend_settings` without its
    popularity coordinates), as each peer's setting is; the parts fitted on the training split
    for validation and on train + validation for test. Returns the settings, their plain
    validation NDCG@20 and the test scorer (a user with no history gets ``popularity``)."""
    artifact = load_artifact(str(model_dir), expected_dims=setup.catalog.dims)
    recorded = artifact.manifest.config
    model = recorded.get("model", {})
    two_tower = TwoTowerScorer(artifact.model, setup.catalog.subset(artifact.model.modalities))
    context = setup.train_context
    collab = None
    if model.get("collab", {}).get("enabled", True):
        rank = int(model.get("collab", {}).get("rank", CollabConfig().rank))
        collab = CollaborativeScorer(rank=rank, seed=context.seed or 0).fit(context)
        collab.fill_from_content(two_tower.item_vectors())
    content = fit_content(recorded, context) if model.get("content", {}).get("enabled", True) else None
    settings, trials = choose_blend_settings(
        lambda scorer: validation_ndcg(plain_scorer(scorer.primary, train_popularity), setup),
        two_tower,
        collab,
        context,
        setup.validation.history,
        content=content,
        popularity_coordinates=False,
        collab_weights=PLAIN_COLLAB_GRID,
    )
    test = fit_served_retriever(two_tower, settings, setup.context, recorded)
    return settings, trials[settings.label()], plain_scorer(test.primary, popularity)


def plain_scorer(primary: DotProductScorer, popularity: PopularityScorer) -> FallbackScorer:
    """``primary`` unblended; a user with an empty history gets ``popularity`` (shrinkage 0:
    a(h) = 1 for h > 0, a(0) = 0)."""
    return FallbackScorer(primary, popularity, 0.0)


# --- blending a peer's scores as raymm blends its own -----------------------------------------

#: Normalised score of items a peer never scored: below any blend of scored items.
UNSCORED = np.float32(-1.0e4)


def normalise_rows(matrix: np.ndarray) -> np.ndarray:
    """Each user's scores on one scale: ``(s - median) / (max - median)`` over the items the peer
    scored (top item 1, median item 0; 1 where max = median), so one shrinkage grid covers every
    system; within a user the order is unchanged. Unscored items (below -1e38) get
    :data:`UNSCORED`. Recent popularity, the other half of the blend, is log-count / log-max-count
    (top item 1)."""
    scored = matrix > np.float32(-1.0e38)
    values = np.where(scored, matrix, np.nan).astype(np.float64)
    top = np.nanmax(values, axis=1, keepdims=True)
    middle = np.nanmedian(values, axis=1, keepdims=True)
    spread = top - middle
    spread = np.where(spread > 0, spread, 1.0)
    out = (values - middle) / spread
    return np.where(scored, out, UNSCORED).astype(np.float32)


class MatrixScores(DotProductScorer):
    """A peer's normalised score matrix standing where raymm's personal scorer stands in
    :func:`~raymm.recommend.blend.choose_blend_settings`, so a peer's blend is searched by raymm's
    own code; :class:`BlendedScorer` ranks it (a (U, N) matrix is no dot product worth doing)."""

    def __init__(self, name: str, user_ids: Sequence[str], scores: np.ndarray) -> None:
        self.name = name
        self.precomputed = PrecomputedScorer(name, user_ids, scores)

    def item_vectors(self) -> Tensor:
        raise NotImplementedError("MatrixScores ranks through BlendedScorer")

    def user_vectors(self, history: np.ndarray) -> Tensor:
        raise NotImplementedError("MatrixScores ranks through BlendedScorer")


class BlendedScorer(Scorer):
    """A precomputed score matrix blended with popularity exactly as
    :class:`~raymm.recommend.scorers.FallbackScorer` blends raymm's personal scorer: score =
    a(h) * (s + g * popularity) + (1 - a(h)) * popularity, a(h) = h / (h + shrinkage) with h the
    user's history entries (a(0) = 0), g the popularity weight. ``matrix`` holds rows already
    normalised (:func:`normalise_rows`); a user without a row gets popularity alone (a = 0), as
    raymm's users without history do."""

    def __init__(
        self,
        matrix: MatrixScores,
        popularity: PopularityScorer,
        shrinkage: float,
        popularity_weight: float = 0.0,
    ) -> None:
        self.name = f"{matrix.name} + popularity"
        self.matrix, self.popularity = matrix, popularity
        self.shrinkage, self.popularity_weight = shrinkage, popularity_weight

    @classmethod
    def of(cls, served: FallbackScorer) -> BlendedScorer:
        """The blend ``served`` (what :func:`~raymm.recommend.blend.served_retriever` built around a
        :class:`MatrixScores`) describes."""
        assert isinstance(served.primary, MatrixScores)
        return cls(served.primary, served.popularity, served.shrinkage, served.popularity_weight)

    def recommend(
        self,
        history: np.ndarray,
        k: int,
        *,
        exclude: ItemSets | None = None,
        candidates: np.ndarray | None = None,
        recency: np.ndarray | None = None,
        user_ids: np.ndarray | None = None,
    ) -> TopK:
        if user_ids is None:
            raise ValueError(f"{self.name}: precomputed scores need the users' ids")
        row_of = self.matrix.precomputed.row
        rows = np.array([row_of.get(str(user), -1) for user in user_ids], dtype=np.int64)
        unknown = torch.from_numpy(rows < 0)
        popularity = self.popularity.item_vectors()[:, 0]
        weight = history_weight(history, self.shrinkage)
        weight[unknown] = 0.0
        personal = self.matrix.precomputed.scores[torch.from_numpy(np.maximum(rows, 0))]
        personal[unknown] = 0.0
        blended = (
            weight[:, None] * (personal + self.popularity_weight * popularity[None, :])
            + (1.0 - weight)[:, None] * popularity[None, :]
        )
        return top_k_of_scores(blended, k, exclude=exclude, candidates=candidates)


def choose_peer_blend(matrix: MatrixScores, setup: EvalSetup) -> tuple[BlendSettings, float]:
    """The blend with the best validation NDCG@20, searched by raymm's own
    :func:`~raymm.recommend.blend.choose_blend_settings` (same grids, same coordinate search,
    popularity counted on the training split; no item-item part: a peer has its own). Returns the
    settings and their validation NDCG@20."""
    settings, trials = choose_blend_settings(
        lambda served: validation_ndcg(BlendedScorer.of(served), setup),
        matrix,
        None,
        setup.train_context,
        setup.validation.history,
    )
    return settings, trials[settings.label()]


def blend_row(settings: BlendSettings) -> dict[str, Any]:
    return {
        "half_life_days": settings.half_life_days,
        "shrinkage": settings.shrinkage,
        "popularity_weight": settings.popularity_weight,
    }


# --- scoring --------------------------------------------------------------------------------


def test_hits(scorer: Scorer, users: EvalUsers) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per held-out (user, item) pair of the users with a truth: (user position in ``users``,
    catalog row, whether the item is in the user's top K). Same ranking as the evaluator's."""
    active = np.flatnonzero(users.truth.sizes > 0)
    owners, items, hits = [], [], []
    for start in range(0, active.size, 256):
        chunk = active[start : start + 256]
        top = scorer.recommend(
            users.history[chunk], K, exclude=users.seen.take(chunk), user_ids=users.user_ids[chunk]
        ).rows.numpy()
        positions, truth = users.truth.gather(chunk)
        owners.append(chunk[positions])
        items.append(truth)
        hits.append((top[positions] == truth[:, None]).any(axis=1))
    if not owners:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, bool)
    return np.concatenate(owners), np.concatenate(items), np.concatenate(hits)


def cold_recall(scorer: Scorer, setup: EvalSetup) -> float | None:
    protocol = setup.protocols.get("cold_start")
    if protocol is None:
        return None
    _, values = per_user_metrics(
        scorer, protocol.users, KS, setup.catalog.n_items, protocol.candidates, protocol.recency
    )
    return float(values[f"recall@{K}"].mean())


class Record:
    """One system's results in one table: the grid on validation, then per seed on test."""

    def __init__(self, system: str, kind: str) -> None:
        self.system, self.kind = system, kind
        self.grid: list[dict[str, Any]] = []
        self.best: dict[str, Any] | None = None
        self.seeds: list[int] = []
        self.test: list[dict[str, float]] = []
        self.per_user: list[dict[str, np.ndarray]] = []
        self.hits: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        self.user_ids: np.ndarray | None = None
        self.cold: list[float] = []
        self.fit_s: list[float] = []
        self.extra: dict[str, Any] = {}

    def add_test(
        self,
        seed: int,
        users: np.ndarray,
        values: dict[str, np.ndarray],
        fit_s: float,
        hits: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None,
    ) -> None:
        if self.user_ids is not None and not np.array_equal(users, self.user_ids):
            raise SystemExit(f"{self.system}: seeds scored different users")
        self.user_ids = users
        self.seeds.append(seed)
        self.per_user.append(values)
        if hits is not None:
            self.hits.append(hits)
        self.test.append({m: float(values[m].mean()) for m in METRICS})
        self.fit_s.append(fit_s)

    def mean_per_user(self, metric: str) -> np.ndarray:
        return np.mean([values[metric] for values in self.per_user], axis=0)

    def summary(self, oracle: dict[str, float] | None) -> dict[str, Any]:
        test = {m: mean_sd([row[m] for row in self.test]) for m in METRICS}
        document: dict[str, Any] = {
            "system": self.system,
            "kind": self.kind,
            "best": self.best,
            "grid": self.grid,
            "seeds": self.seeds,
            "test": test,
            "cold_start_recall@20": mean_sd(self.cold) if self.cold else None,
            "fit_s": mean_sd(self.fit_s),
            **self.extra,
        }
        if oracle:
            document["oracle_fraction"] = {
                m: round(test[m]["mean"] / oracle[m], 4) for m in (f"recall@{K}", f"ndcg@{K}") if oracle[m]
            }
        return document


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    if args.table:
        merged = json.loads((RESULTS / "peers.json").read_text())
        plot(merged, RESULTS / "peers.png")
        print(markdown(merged))
        return merged
    started = time.perf_counter()
    torch.set_num_threads(os.cpu_count() or 1)
    overrides = [*(QUICK_TRAINING if args.quick else ()), *args.set]
    prepared_s: dict[str, float] = {}
    if args.dataset == "synthetic":
        data, features = ensure_quickstart(QUICKSTART, BENCH)
        name = args.name or "synthetic"
    elif args.dataset == "ml100k":
        from fetch_ml100k import prepare

        data, features, prepared_s = prepare()
        name = args.name or "ml100k"
        overrides = ["model.modalities=[text]", *overrides]
    elif args.data is None and args.quick:  # seconds to make, against minutes of extraction
        name = args.name or "tiny"
        data, features = tiny_facet_dataset(
            (args.work or ROOT / "out" / "peers" / name) / "dataset", seed=0, missing_image=0.3
        )
    else:
        if args.data is None:
            raise SystemExit("give --dataset, or --data (and --features unless the dataset carries them)")
        data = args.data.resolve()
        if args.features is None:
            from raymm.data.dataset import imported_features

            found = imported_features(str(data))
            if found is None:
                raise SystemExit(f"{data} carries no imported features: give --features")
            features = Path(found)
        else:
            features = args.features.resolve()
        name = args.name or data.parent.name
    seeds = [int(s) for s in args.seeds.split(",")]
    systems = [s for s in args.systems.split(",") if s]
    work = (args.work or ROOT / "out" / "peers" / name).resolve()
    work.mkdir(parents=True, exist_ok=True)
    # Ray workers' output (Ray Train's per-epoch reports) stays in Ray's log files.
    # The quickstart config's resources, the package's training defaults (its 3 epochs are the
    # quickstart's time budget; RAYMM_GRID[0] is meant to be what ships).
    config = load_config(
        BASE_CONFIG, [f"out={work}", "ray.log_to_driver=false", *PACKAGE_TRAINING, *overrides]
    )
    from raymm.runtime import init_ray

    init_ray(config.ray)
    setup = eval_setup(config, str(data), str(features))
    test_users = setup.protocols["test"].users
    oracle_scorer = None
    oracle_data = load_oracle(str(data))
    if oracle_data is not None:
        oracle_scorer = OracleScorer(oracle_data, setup.catalog)

    export = Export(data, features, work / "export", config)
    vbpr_features = "image" if "image" in export.features else ("text" if "text" in export.features else None)
    # One Record per (table, system): "blended" and "plain" (see the module docstring).
    records: dict[str, dict[str, Record]] = {table: {} for table in TABLES}

    def record_pair(system: str, kind: str) -> tuple[Record, Record]:
        pair = (Record(system, kind), Record(system, kind))
        for table, record in zip(TABLES, pair, strict=True):
            records[table][system] = record
        return pair

    test_users_known = test_users.truth.sizes > 0
    true_history = _history_lengths(setup, test_users)

    def add_test(
        record: Record, scorer: Scorer, seed: int, fit_s: float, cold: bool = False
    ) -> dict[str, np.ndarray]:
        users, values = score(scorer, setup, test_users)
        record.add_test(seed, users, values, fit_s, test_hits(scorer, test_users))
        if cold:
            recall = cold_recall(scorer, setup)
            if recall is not None:
                record.cold.append(recall)
        return values

    # Recent popularity, its half-life chosen on validation as raymm's fallback chooses it: a
    # baseline of its own (how much of raymm's answer is the fallback), and the answer every
    # system gives a user it cannot score in the plain table.
    by_half_life = {
        half_life: validation_ndcg(PopularityScorer(half_life_days=half_life).fit(setup.train_context), setup)
        for half_life in HALF_LIFE_GRID_DAYS
    }
    half_life = max(by_half_life, key=lambda h: by_half_life[h])
    train_popularity = PopularityScorer(half_life_days=half_life).fit(setup.train_context)
    popularity = PopularityScorer(half_life_days=half_life).fit(setup.context)

    # Peers: the grid on validation (each setting blended as raymm's is blended, its blend chosen
    # on validation too), then the best setting refit on train+validation per seed.
    grid_size = 1 if args.quick else args.grid_size
    jobs = [
        job
        for job in peer_jobs(export, setup, systems, vbpr_features)
        if int(job["id"].split("-g")[1].split("-")[0]) < grid_size
    ]
    metas = run_cornac(export, jobs)
    blends: dict[str, BlendSettings] = {}
    settings_of: dict[tuple[str, str], BlendSettings] = {}
    for job in jobs:
        system = job["system"]
        if system not in records["blended"]:
            record_pair(system, "peer (Cornac 3.0.1)")
        plain_value = validation_ndcg(
            peer_scorer(export, setup, job["id"], metas[job["id"]], train_popularity), setup
        )
        settings, blended_value = choose_peer_blend(
            peer_matrix(export, setup, job["id"], metas[job["id"]]), setup
        )
        row = {
            "params": job["params"],
            "validation_ndcg@20": round(blended_value, 4),
            "plain_validation_ndcg@20": round(plain_value, 4),
            "blend": blend_row(settings),
            "fit_s": metas[job["id"]]["fit_s"],
        }
        settings_of[(system, json.dumps(job["params"], sort_keys=True))] = settings
        for table in TABLES:
            records[table][system].grid.append(row)
    test_ids = export.users(test_users.user_ids)
    finals = []
    # Each table's setting by its own validation score: the blended table's by blended validation
    # NDCG@20, the plain table's by plain. Each table's headline peer (best on its validation,
    # MostPop aside) runs every seed; the others one. A fit serving both tables runs once.
    keys = {"blended": "validation_ndcg@20", "plain": "plain_validation_ndcg@20"}
    by_id: dict[str, dict[str, Any]] = {}
    for table, key in keys.items():
        headline_peer = max(
            (r for r in records[table].values() if r.system != "MostPop"),
            key=lambda r, key=key: max(row[key] for row in r.grid),
            default=None,
        )
        for system, record in records[table].items():
            best = max(record.grid, key=lambda row, key=key: row[key])
            if table == "blended":
                blends[system] = settings_of[(system, json.dumps(best["params"], sort_keys=True))]
                record.best = {**best["params"], "blend": best["blend"]}
            else:
                record.best = dict(best["params"])
            if system == "VBPR":
                record.extra["features"] = vbpr_features
            for seed in seeds if record is headline_peer else seeds[:1]:
                job_id = f"{system}-best-{_digest(best['params'])}-s{seed}-test"
                job = by_id.setdefault(
                    job_id,
                    {
                        "id": job_id,
                        "system": system,
                        "params": best["params"],
                        "fit": ["train", "validation"],
                        "users": test_ids,
                        "seed": seed,
                        "features": vbpr_features,
                        "cross_check": False,
                        "tables": [],
                    },
                )
                job["tables"].append(table)
                if table == "blended" and system == CROSS_CHECK_SYSTEM and seed == seeds[0]:
                    job["cross_check"] = True
    finals = list(by_id.values())
    final_metas = run_cornac(export, finals)
    if args.cornac_only:
        log(BENCH, f"{len(jobs)} validation and {len(finals)} test Cornac fits cached in {export.root}")
        document = {
            "bench": f"{BENCH}.{name}",
            "cornac_only": True,
            "validation_fits": len(jobs),
            "test_fits": len(finals),
            "grid": {system: record.grid for system, record in records["blended"].items()},
            "wall_s": round(time.perf_counter() - started, 1),
        }
        print(json.dumps(document, default=float), flush=True)
        return document
    for job in finals:
        system, meta = job["system"], final_metas[job["id"]]
        if "blended" in job["tables"]:
            blend = blends[system]
            blended = BlendedScorer(
                peer_matrix(export, setup, job["id"], meta),
                PopularityScorer(half_life_days=blend.half_life_days).fit(setup.context),
                blend.shrinkage,
                blend.popularity_weight,
            )
            add_test(records["blended"][system], blended, job["seed"], meta["fit_s"])
        if "plain" in job["tables"]:
            add_test(
                records["plain"][system],
                peer_scorer(export, setup, job["id"], meta, popularity),
                job["seed"],
                meta["fit_s"],
            )
        for table in TABLES:
            records[table][system].extra["test_users_unknown_to_it"] = len(test_ids) - len(meta["users"])
    cross_check = None
    for job in finals:
        if job.get("cross_check"):
            cross_check = check_against_cornac(export, setup, job["id"], final_metas[job["id"]], popularity)

    # raymm: the grid on validation (its served, blended scorer), the best refit per seed; the
    # default settings (RAYMM_GRID[0]) reported on their own; ablations at the default settings.
    raymm_blended, raymm_plain = record_pair("raymm", "raymm (tuned on validation)")
    raymm_grid = RAYMM_GRID[:grid_size]
    # Models trained (or reused) in this run, and raymm's plain choice per model (see plain_personal).
    trained: dict[Path, float] = {}
    plain_of: dict[Path, tuple[BlendSettings, float, FallbackScorer]] = {}

    def raymm_model(index: int, seed: int) -> tuple[Path, float]:
        """The grid's ``index`` setting trained with ``seed`` (once per run); its path and seconds."""
        out = work / "raymm" / f"g{index}-s{seed}"
        if out not in trained:
            overrides = RAYMM_GRID[index] if seed == seeds[0] else (*RAYMM_GRID[index], f"seed={seed}")
            trained[out] = train_raymm(config, overrides, data, features, out, args.reuse)
        return out, trained[out]

    def plain_choice(out: Path) -> tuple[BlendSettings, float, FallbackScorer]:
        if out not in plain_of:
            plain_of[out] = plain_personal(out, setup, train_popularity, popularity)
        return plain_of[out]

    for index, grid_overrides in enumerate(raymm_grid):
        out, seconds = raymm_model(index, seeds[0])
        validation_scorer, test_scorer = raymm_scorers(out, setup)
        plain_settings, plain_value, _ = plain_choice(out)
        row = {
            "overrides": list(grid_overrides),
            "validation_ndcg@20": round(validation_ndcg(validation_scorer, setup), 4),
            "plain_validation_ndcg@20": round(plain_value, 4),
            "blend": {
                "half_life_days": test_scorer.popularity.half_life_days,
                "shrinkage": test_scorer.shrinkage,
                "popularity_weight": test_scorer.popularity_weight,
                "personal": test_scorer.primary.name,
                "chosen": BlendSettings.chosen(load_artifact(str(out)).manifest.metrics),
            },
            "plain_choice": plain_settings.label().split("/pop=")[0],
            "fit_s": round(seconds, 1),
            **_curve(out),
        }
        raymm_blended.grid.append(row)
        raymm_plain.grid.append(row)
        log(
            BENCH,
            f"raymm grid {index} {list(grid_overrides)}: {row['validation_ndcg@20']} (plain {row['plain_validation_ndcg@20']})",
        )
    # Each table's setting by its own validation score, as every peer's is.
    best_index = max(range(len(raymm_grid)), key=lambda i: raymm_blended.grid[i]["validation_ndcg@20"])
    plain_index = max(range(len(raymm_grid)), key=lambda i: raymm_plain.grid[i]["plain_validation_ndcg@20"])
    default_blended, default_plain = record_pair("raymm (default)", "raymm, shipped defaults (RAYMM_GRID[0])")
    raymm_blended.best = {"overrides": list(RAYMM_GRID[best_index])}
    raymm_plain.best = {"overrides": list(RAYMM_GRID[plain_index])}
    for record in (default_blended, default_plain):
        record.best = {"overrides": []}
        record.grid = raymm_blended.grid[:1]
    raymm_validation: list[dict[str, np.ndarray]] = []
    for seed in seeds:
        out, seconds = raymm_model(best_index, seed)
        validation_scorer, test_scorer = raymm_scorers(out, setup)
        raymm_validation.append(score(validation_scorer, setup, setup.validation)[1])
        add_test(raymm_blended, test_scorer, seed, seconds, cold=True)
        if best_index == 0:
            add_test(default_blended, test_scorer, seed, seconds, cold=True)
        out, seconds = raymm_model(plain_index, seed)
        plain_settings, _, plain_test = plain_choice(out)
        raymm_plain.extra.setdefault("plain_choice_per_seed", []).append(
            plain_settings.label().split("/pop=")[0]
        )
        add_test(raymm_plain, plain_test, seed, seconds, cold=True)
        if plain_index == 0:
            add_test(default_plain, plain_test, seed, seconds, cold=True)
    # The shipped defaults with the first seed (the model the grid trained) where a table chose another.
    out, seconds = raymm_model(0, seeds[0])
    if best_index != 0:
        _, test_scorer = raymm_scorers(out, setup)
        add_test(default_blended, test_scorer, seeds[0], seconds, cold=True)
    if plain_index != 0:
        add_test(default_plain, plain_choice(out)[2], seeds[0], seconds, cold=True)

    # Training-free baselines on the same users (content blended as every system is), and the
    # ablation variants.
    for baseline in (PopularityScorer(), ContentScorer()):
        pair = record_pair(baseline.name, "baseline (training-free)")
        fitted = baseline.fit(setup.context)
        if isinstance(baseline, ContentScorer):
            content_settings, _ = choose_blend_settings(
                lambda scorer: validation_ndcg(scorer, setup),
                ContentScorer().fit(setup.train_context),
                None,
                setup.train_context,
                setup.validation.history,
            )
            pair[0].best = {"blend": blend_row(content_settings)}
            blended_content = served_retriever(
                fitted,
                None,
                PopularityScorer(half_life_days=content_settings.half_life_days).fit(setup.context),
                content_settings,
            )
            add_test(pair[0], blended_content, seeds[0], 0.0, cold=True)
            add_test(pair[1], plain_scorer(fitted, popularity), seeds[0], 0.0, cold=True)
        else:
            for record in pair:
                add_test(record, fitted, seeds[0], 0.0, cold=True)
    for record in record_pair(
        "recent popularity", "baseline (training-free; half-life chosen on validation)"
    ):
        record.grid = [
            {"half_life_days": h, "validation_ndcg@20": round(v, 4)} for h, v in by_half_life.items()
        ]
        record.best = {"half_life_days": half_life}
        add_test(record, popularity, seeds[0], 0.0)
    if not args.no_ablation and "image" in setup.catalog.features:
        for variant, variant_overrides in SYNTHETIC_ABLATION.items():
            out = work / "raymm" / f"ablation-{variant}"
            seconds = train_raymm(config, variant_overrides, data, features, out, args.reuse)
            blended_record, plain_record = record_pair(
                f"raymm {variant}", "raymm ablation (default settings, one seed)"
            )
            _, test_scorer = raymm_scorers(out, setup)
            add_test(blended_record, test_scorer, seeds[0], seconds, cold=True)
            add_test(plain_record, plain_choice(out)[2], seeds[0], seconds, cold=True)

    oracle: dict[str, float] | None = None
    if oracle_scorer is not None:
        for record in record_pair("oracle", "the generator's true affinity (upper bound)"):
            add_test(record, oracle_scorer, seeds[0], 0.0, cold=True)
        oracle = {m: records["blended"]["oracle"].test[0][m] for m in METRICS}

    _write_per_user(work, records, setup, test_users, true_history)
    summaries = {
        table: {system: record.summary(oracle) for system, record in records[table].items()}
        for table in TABLES
    }
    for table in TABLES:
        for system, summary in summaries[table].items():
            means = {m: round(summary["test"][m]["mean"], 4) for m in (f"recall@{K}", f"ndcg@{K}")}
            log(BENCH, f"{table} {system}: {means}")
    comparisons: dict[str, dict[str, Any]] = {}
    best_peers: dict[str, str | None] = {}
    for table in TABLES:
        chosen = records[table]
        peers_only = [
            r for r in chosen.values() if r.kind.startswith("peer") and r.system != "MostPop" and r.grid
        ]
        key = "validation_ndcg@20" if table == "blended" else "plain_validation_ndcg@20"
        best_peer = max(peers_only, key=lambda r: max(row[key] for row in r.grid), default=None)
        best_peers[table] = None if best_peer is None else best_peer.system
        raymm_record = chosen["raymm"]
        table_comparisons: dict[str, Any] = {}
        if best_peer is not None:
            table_comparisons[f"raymm vs {best_peer.system} (best peer on validation)"] = _paired(
                raymm_record, best_peer
            )
            best_test_peer = max(
                peers_only, key=lambda r: float(np.mean([row[f"ndcg@{K}"] for row in r.test]))
            )
            if best_test_peer is not best_peer:
                table_comparisons[
                    f"raymm vs {best_test_peer.system} (best peer on test, for information)"
                ] = _paired(raymm_record, best_test_peer)
        table_comparisons["raymm vs recent popularity"] = _paired(raymm_record, chosen["recent popularity"])
        table_comparisons["raymm vs popularity"] = _paired(raymm_record, chosen["popularity"])
        table_comparisons["raymm vs raymm (default)"] = _paired(raymm_record, chosen["raymm (default)"])
        if "MostPop" in chosen:
            table_comparisons["raymm vs MostPop (Cornac)"] = _paired(raymm_record, chosen["MostPop"])
        comparisons[table] = table_comparisons
    blended_summaries = summaries["blended"]
    against_recent = _against_recent_popularity(
        raymm_validation,
        score(train_popularity, setup, setup.validation)[1],
        setup,
        raymm_blended,
        records["blended"]["recent popularity"],
        test_users,
        true_history,
    )

    dataset_doc = load_dataset(str(data), tables=()).manifest
    report = {
        "dataset": name,
        # The dataset's name and format, never its path (results carry no machine paths).
        "source": {
            key: value
            for key, value in (dataset_doc.get("source") or {"name": dataset_doc.get("name")}).items()
            if key != "path"
        }
        if isinstance(dataset_doc.get("source"), dict)
        else dataset_doc.get("source"),
        "protocol": "raymm's evaluator: test split, full ranking over the catalog, seen items excluded; "
        "tuning on validation only, peers refit on train+validation for test; two tables: 'blended' "
        "(every system blended with recent popularity as raymm's served scorer is, the blend chosen "
        "per system on validation) and 'plain' (no system blended)",
        "users": {
            "test": int(test_users_known.sum()),
            "test_without_history": int((test_users_known & (test_users.history_length == 0)).sum()),
            "validation": int((setup.validation.truth.sizes > 0).sum()),
        },
        "n_items": setup.catalog.n_items,
        "k": K,
        "grid_size": grid_size,
        "cores": os.cpu_count(),
        "raymm_train_defaults": {key: getattr(config.train, key) for key in ("epochs", "patience")},
        "systems": blended_summaries,
        "plain": summaries["plain"],
        "best_peer_on_validation": best_peers,
        "comparisons": comparisons,
        "raymm_against_recent_popularity": against_recent,
        "raymm_at_least_popularity": bool(
            blended_summaries["raymm"]["test"][f"recall@{K}"]["mean"]
            >= blended_summaries["popularity"]["test"][f"recall@{K}"]["mean"]
            and blended_summaries["raymm"]["test"][f"ndcg@{K}"]["mean"]
            >= blended_summaries["popularity"]["test"][f"ndcg@{K}"]["mean"]
        ),
        "cross_check": cross_check,
        "notes": [
            "blended table: each peer's scores normalised per user ((s - median) / (max - median) over"
            " the items it scored: top item 1, median item 0) and blended as raymm's served scorer is,"
            " a(h) primary + (1 - a(h)) recent popularity with a(h) = h / (h + shrinkage), the half-life"
            " and shrinkage chosen per system on validation over raymm's grids; raymm as served (the blend"
            " its training chose); content blended with raymm's choose_blend",
            "plain table: no system blended; raymm is its personal scorer (two-tower + item-item +"
            " content) with its weights, item-item l2 and recency decay chosen on plain validation",
            "in both tables a user a system cannot score (a peer never saw them, raymm has no history)"
            " gets recent popularity: its system's blend in the blended table (a(0) = 0), the 'recent"
            " popularity' row's half-life in the plain table",
            "each table takes each system's setting by that table's validation NDCG@20 (blended: raymm's"
            " served scorer's; plain: without any popularity blend) and runs its best peer on validation"
            " with every seed",
            "raymm (default) is RAYMM_GRID[0], the shipped defaults, one seed unless the grid chose it",
            "peers cannot score cold items (Cornac indexes training items only): their cold-start recall is null",
            f"VBPR reads the {vbpr_features} features" if vbpr_features else "VBPR skipped: no features",
        ],
        "prepare_s": prepared_s,
        "wall_s": round(time.perf_counter() - started, 1),
    }
    out = args.out or RESULTS / f"{BENCH}.{name}{'.quick' if args.quick else ''}.json"
    document = finish(f"{BENCH}.{name}", report, out)
    if not args.quick and args.out is None:
        _merge(name, document)
    return document


def _history_lengths(setup: EvalSetup, users: EvalUsers) -> np.ndarray:
    """(U,) each user's counting events before the evaluated period (not capped by the window)."""
    events = positive_events(setup.context.interactions, setup.context.events)
    ids, counts = np.unique(np.asarray(events.column("user_id").to_pylist(), dtype=str), return_counts=True)
    lookup = dict(zip(ids.tolist(), counts.tolist(), strict=True))
    return np.array([lookup.get(str(u), 0) for u in users.user_ids], dtype=np.int64)


def _write_per_user(
    work: Path,
    records: dict[str, dict[str, Record]],
    setup: EvalSetup,
    users: EvalUsers,
    history: np.ndarray,
) -> None:
    """``per_user.parquet`` and ``hits.parquet`` in ``work`` (bench/peers_breakdown.py reads them)."""
    import pyarrow.parquet as pq

    position = {str(u): i for i, u in enumerate(users.user_ids)}
    item_ids = np.asarray(
        setup.catalog.item_ids.to_pylist()
        if hasattr(setup.catalog.item_ids, "to_pylist")
        else setup.catalog.item_ids,
        dtype=object,
    )
    counts = item_counts(setup.context.interactions, setup.catalog, setup.context.events)
    per_user, hits = [], []
    for table, by_system in records.items():
        for system, record in by_system.items():
            if record.user_ids is None:
                continue
            rows = np.array([position[str(u)] for u in record.user_ids], dtype=np.int64)
            for index, seed in enumerate(record.seeds):
                values = record.per_user[index]
                per_user.append(
                    pa.table(
                        {
                            "user_id": pa.array(record.user_ids.astype(str)),
                            "system": pa.array([system] * rows.size),
                            "table": pa.array([table] * rows.size),
                            "seed": pa.array(np.full(rows.size, seed, np.int64)),
                            "history_length": pa.array(history[rows]),
                            f"recall@{K}": pa.array(values[f"recall@{K}"].astype(np.float64)),
                            f"ndcg@{K}": pa.array(values[f"ndcg@{K}"].astype(np.float64)),
                        }
                    )
                )
                if index < len(record.hits):
                    owners, items, hit = record.hits[index]
                    hits.append(
                        pa.table(
                            {
                                "user_id": pa.array(users.user_ids[owners].astype(str)),
                                "item_id": pa.array(item_ids[items].astype(str)),
                                "item_count": pa.array(counts[items].astype(np.float64)),
                                "history_length": pa.array(history[owners]),
                                "system": pa.array([system] * owners.size),
                                "table": pa.array([table] * owners.size),
                                "seed": pa.array(np.full(owners.size, seed, np.int64)),
                                "hit": pa.array(hit),
                            }
                        )
                    )
    pq.write_table(pa.concat_tables(per_user), work / "per_user.parquet")
    if hits:
        pq.write_table(pa.concat_tables(hits), work / "hits.parquet")
    log(BENCH, f"per-user metrics and hits in {work}")


def _curve(model_dir: Path) -> dict[str, Any]:
    """The run's best epoch and validation curve, from its artifact."""
    manifest = json.loads((model_dir / "manifest.json").read_text())
    metrics = manifest.get("metrics", {})
    return {
        "best_epoch": metrics.get("best_epoch"),
        "validation_curve": [
            {k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()}
            for row in metrics.get("history", [])
        ],
    }


def _against_recent_popularity(
    raymm_validation: list[dict[str, np.ndarray]],
    popularity_validation: dict[str, np.ndarray],
    setup: EvalSetup,
    raymm: Record,
    popularity: Record,
    test_users: EvalUsers,
    true_history: np.ndarray,
) -> dict[str, Any]:
    """raymm as served against recent popularity alone, on validation and test, on every user and
    on the users with history (issue 24 asks for both): per-user values averaged over raymm's seeds
    first, then the paired test. Validation scores raymm's final models (the split's own blend,
    counted on the training split) and recent popularity at the half-life validation chose."""
    # per-user metrics cover the users with a truth, in order
    validation_history = (setup.validation.history >= 0).any(axis=1)[setup.validation.truth.sizes > 0]
    position = {str(u): i for i, u in enumerate(test_users.user_ids)}
    assert raymm.user_ids is not None and popularity.user_ids is not None
    test_history = true_history[[position[str(u)] for u in raymm.user_ids]] > 0
    result: dict[str, Any] = {}
    for split, first, second, has_history in (
        (
            "validation",
            lambda m: np.mean([v[m] for v in raymm_validation], axis=0),
            lambda m: popularity_validation[m],
            validation_history,
        ),
        ("test", raymm.mean_per_user, popularity.mean_per_user, test_history),
    ):
        for users, mask in (("all users", np.ones_like(has_history)), ("users with history", has_history)):
            result[f"{split}, {users}"] = {
                metric: paired_test(first(metric)[mask], second(metric)[mask])
                for metric in (f"ndcg@{K}", f"recall@{K}")
            }
    return result


def _paired(first: Record, second: Record) -> dict[str, Any]:
    if (
        first.user_ids is None
        or second.user_ids is None
        or not np.array_equal(first.user_ids, second.user_ids)
    ):
        raise SystemExit(f"{first.system} and {second.system} were scored on different users")
    return {
        metric: paired_test(first.mean_per_user(metric), second.mean_per_user(metric))
        for metric in (f"ndcg@{K}", f"recall@{K}")
    }


def check_against_cornac(
    export: Export, setup: EvalSetup, job_id: str, meta: dict[str, Any], popularity: PopularityScorer
) -> dict[str, Any]:
    """raymm's evaluator and Cornac's ranking_eval on the same model, users and items."""
    cornac = meta["cornac_eval"]
    per_user_recall = cornac["per_user"]["Recall@20"]
    evaluated = [export.user_ids[int(u)] for u in per_user_recall]
    known_items = setup.catalog.positions(pa.array([export.item_ids[i] for i in cornac["known_items"]]))
    test = setup.protocols["test"].users
    index = {u: i for i, u in enumerate(test.user_ids)}
    rows = np.array([index[u] for u in evaluated if u in index], dtype=np.int64)
    users = EvalUsers(test.user_ids[rows], test.history[rows], test.seen.take(rows), test.truth.take(rows))
    # Cornac drops test items it never saw from the truth; so does this check.
    owners, items = users.truth.gather(np.arange(len(rows)))
    keep = np.isin(items, known_items[known_items >= 0])
    users = EvalUsers(
        users.user_ids, users.history, users.seen, ItemSets.from_pairs(owners[keep], items[keep], len(rows))
    )
    scorer = peer_scorer(export, setup, job_id, meta, popularity)
    ids, values = per_user_metrics(scorer, users, KS, setup.catalog.n_items)
    raymm_values = {
        "Recall@20": float(values[f"recall@{K}"].mean()),
        "NDCG@20": float(values[f"ndcg@{K}"].mean()),
    }
    cornac_values = {
        m: float(np.mean([cornac["per_user"][m][str(export.user_index[u])] for u in ids]))
        for m in ("Recall@20", "NDCG@20")
    }
    relative = {
        m: abs(raymm_values[m] - cornac_values[m]) / max(cornac_values[m], 1e-12) for m in raymm_values
    }
    return {
        "model": job_id,
        "users": len(ids),
        "raymm_evaluator": {m: round(v, 5) for m, v in raymm_values.items()},
        "cornac_ranking_eval": {m: round(v, 5) for m, v in cornac_values.items()},
        "relative_difference": {m: round(v, 5) for m, v in relative.items()},
        "within_2_percent": all(v <= CROSS_CHECK_TOLERANCE for v in relative.values()),
    }


def _merge(name: str, document: dict[str, Any]) -> None:
    """Merge one dataset's summary into bench/results/peers.json: per table ("blended": every
    system blended with recent popularity as raymm's served scorer is; "plain": none blended)."""
    path = RESULTS / "peers.json"
    merged = json.loads(path.read_text()) if path.is_file() else {"bench": "peers", "datasets": {}}

    def rows(systems: dict[str, Any]) -> dict[str, Any]:
        return {
            system: {
                **{m: summary["test"][m] for m in METRICS},
                "cold_start_recall@20": summary["cold_start_recall@20"],
                "fit_s": summary["fit_s"],
                "oracle_fraction": summary.get("oracle_fraction"),
            }
            for system, summary in systems.items()
        }

    merged["datasets"][name] = {
        "date": document["date"],
        "file": f"bench/results/peers.{name}.json",
        "users": document["users"],
        "tables": {"blended": rows(document["systems"]), "plain": rows(document["plain"])},
        "best_peer_on_validation": document["best_peer_on_validation"],
        "comparisons": {
            table: {
                key: None
                if value is None
                else {
                    m: {k: value[m][k] for k in ("mean_difference", "sign_flip_p", "first_better")}
                    for m in value
                }
                for key, value in comparisons.items()
            }
            for table, comparisons in document["comparisons"].items()
        },
        "raymm_at_least_popularity": document["raymm_at_least_popularity"],
        "cross_check": document["cross_check"],
        "wall_s": document["wall_s"],
    }
    path.write_text(json.dumps(merged, indent=2) + "\n")
    plot(merged, RESULTS / "peers.png")


#: Order and labels of the chart and the README tables.
ORDER = (
    "oracle",
    "raymm",
    "raymm (default)",
    "raymm text",
    "raymm concat",
    "LightGCN",
    "BPR",
    "EASE",
    "ItemKNN",
    "GRU4Rec",
    "SASRec",
    "VBPR",
    "CTR",
    "MostPop",
    "popularity",
    "recent popularity",
    "content",
)
#: The README's name for raymm's rows in the plain table.
PLAIN_LABELS = {"raymm": "raymm without fallback", "raymm (default)": "raymm (default) without fallback"}


def _tables(entry: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """A merged dataset's tables (an entry written before 2026-12-06 holds one, "table")."""
    return entry.get("tables") or {"blended": entry["table"]}


def _ordered(table: dict[str, Any]) -> list[str]:
    return [s for s in ORDER if s in table] + [s for s in table if s not in ORDER]


def plot(merged: dict[str, Any], out: Path) -> None:
    """Recall@20 and NDCG@20 per system, dataset and table, mean +- sd over the seeds, as one PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [(name, table) for name in merged["datasets"] for table in _tables(merged["datasets"][name])]
    figure, axes = plt.subplots(len(panels), 1, figsize=(11, 3.6 * len(panels)), squeeze=False)
    for axis, (name, which) in zip(axes[:, 0], panels, strict=True):
        table = _tables(merged["datasets"][name])[which]
        systems = _ordered(table)
        x = np.arange(len(systems))
        for offset, metric in ((-0.2, f"recall@{K}"), (0.2, f"ndcg@{K}")):
            means = [table[s][metric]["mean"] for s in systems]
            errors = [table[s][metric]["sd"] for s in systems]
            axis.bar(x + offset, means, 0.4, yerr=errors, capsize=3, label=metric)
        labels = [PLAIN_LABELS.get(s, s) if which == "plain" else s for s in systems]
        axis.set_xticks(x, labels, rotation=30, ha="right")
        axis.set_title(f"{name}, {which}: test split, raymm's evaluator (error bars: sd over seeds)")
        axis.legend()
    figure.tight_layout()
    figure.savefig(out, dpi=90)
    plt.close(figure)


def markdown(merged: dict[str, Any]) -> str:
    """README tables per dataset and table from bench/results/peers.json."""
    lines = []
    for name, entry in merged["datasets"].items():
        for which, table in _tables(entry).items():
            blurb = (
                "every system blended with recent popularity as raymm's served scorer is"
                if which == "blended"
                else "no system blended, each tuned on plain validation"
            )
            lines += [
                f"**{name}, {which}** ({blurb}; {entry['file']}, {entry['date'][:10]}; test users "
                f"{entry['users']['test']}, {entry['users']['test_without_history']} without history; "
                "mean +- sd over seeds)",
                "",
                "| system | Recall@20 | NDCG@20 | HitRate@20 | cold-start Recall@20 | fit s (2 cores) | of oracle R@20 |",
                "|---|---|---|---|---|---|---|",
            ]
            for system in _ordered(table):
                row = table[system]

                def cell(value: dict[str, Any] | None) -> str:
                    if value is None:
                        return "n/a"
                    return f"{value['mean']:.4f}" + (f" +- {value['sd']:.4f}" if value["n"] > 1 else "")

                fraction = (row.get("oracle_fraction") or {}).get(f"recall@{K}")
                label = PLAIN_LABELS.get(system, system) if which == "plain" else system
                lines.append(
                    f"| {label} | {cell(row[f'recall@{K}'])} | {cell(row[f'ndcg@{K}'])} | "
                    f"{cell(row[f'hit_rate@{K}'])} | {cell(row['cold_start_recall@20'])} | "
                    f"{row['fit_s']['mean']:.0f} | {'' if fraction is None else f'{fraction:.3f}'} |"
                )
            lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
