"""raymm beside the systems users would otherwise pick: same split, same evaluator, same tuning budget.

For one dataset (a raymm dataset directory and its features):

1. **Export** the split with ``raymm data export --format mmrec`` (:func:`raymm.data.export.export_mmrec`)
   plus what Cornac needs: ``positives.tsv`` (the interactions raymm counts as positives,
   ``model.user_state.events``, per split) and ``item_text.tsv``.
2. **Peers** run in their own virtualenv, ``bench/.venv-peers`` (made on first use: ``cornac==3.0.1``,
   torch and DGL 2.1.0 for LightGCN), so raymm's dependencies stay clean: MostPop, BPR,
   LightGCN, VBPR (on the image features, or the text features where there are no images) and
   CTR (Collaborative Topic Regression, Cornac's text-aware model that needs no TensorFlow;
   CDL needs TensorFlow, which Cornac does not install). ``bench/peers_cornac.py`` fits them and
   writes score matrices.
3. **raymm** trains through Ray Train exactly as ``raymm train`` does; its served recommender
   (the two-tower with its popularity fallback) is what is scored. Its ablations and the
   training-free content baseline run beside it.
4. **One evaluator.** Every system, raymm's and the peers', is ranked by raymm's evaluator
   (:mod:`raymm.eval.evaluate`): full ranking, seen items excluded, on the identical users.
   A peer's user that the peer never saw (no positive before the evaluated period) gets recent
   popularity's answer (its half-life chosen on validation), as raymm gives its users without
   history; before 2026-12-01 evening they got MostPop's, which cost the peers on ML-100k.
5. **Tuning on validation only.** Each system gets the same small budget (the first
   ``--grid-size`` settings of :data:`PEER_GRID` / :data:`RAYMM_GRID`: 2 by default, which keeps
   the synthetic run under 30 minutes here; 4 at most), fitted on train and scored on the validation users
   (history from train; popularity for fallbacks fitted on train). The best setting by
   validation NDCG@20 is then refit on train+validation (peers; raymm's histories already read
   train+validation) and scored on test: raymm and the best peer on validation with every seed of
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

Prints one JSON line per system and writes ``bench/results/peers.<name>.json``; every dataset's
summary is merged into ``bench/results/peers.json``.

    .venv/bin/python bench/peers.py --dataset synthetic      # out/quickstart (small), made if absent
    .venv/bin/python bench/peers.py --dataset ml100k --grid-size 4   # bench/fetch_ml100k.py
    .venv/bin/python bench/peers.py --data DIR --features DIR --name NAME [--set key=value ...]
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

from raymm.config import RaymmConfig, load_config
from raymm.data.dataset import SPLITS, load_dataset
from raymm.data.export import export_mmrec
from raymm.eval.evaluate import EvalSetup, eval_setup, per_user_metrics, served_scorer
from raymm.eval.oracle import OracleScorer, load_oracle
from raymm.eval.stats import mean_sd, paired_test
from raymm.models.artifact import load_artifact
from raymm.recommend.history import EvalUsers, positive_events
from raymm.recommend.scorers import (
    HALF_LIFE_GRID_DAYS,
    ContentScorer,
    FallbackScorer,
    PopularityScorer,
    PrecomputedScorer,
    Scorer,
)

BENCH = "peers"
K = 20
KS = (K,)
METRICS = (f"recall@{K}", f"ndcg@{K}", f"hit_rate@{K}")
PEERS_VENV = ROOT / "bench" / ".venv-peers"
PEERS_REQUIREMENTS = ("cornac==3.0.1", "torch==2.11.0", "dgl==2.1.0")
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
}
#: raymm's grid (config overrides on the dataset's base config): the default and three changes.
RAYMM_GRID: list[tuple[str, ...]] = [
    (),
    ("train.epochs=10", "train.patience=3"),
    ("train.lr=0.005", "train.epochs=10", "train.patience=3"),
    ("train.item_id_embeddings=false",),
]
#: raymm's ablation variants per dataset kind, trained with the default settings and evaluated
#: beside the tuned model (one seed; bench/quality_synth.py runs them over seeds).
SYNTHETIC_ABLATION: dict[str, tuple[str, ...]] = {
    "text": ("train.modalities=[text]",),
    "concat": ("model.align.method=none", "model.fusion.method=concat"),
}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dataset", choices=["synthetic", "ml100k"], help="a prepared dataset")
    parser.add_argument("--data", type=Path, help="a raymm dataset directory (with --features)")
    parser.add_argument("--features", type=Path, help="its features directory")
    parser.add_argument("--name", help="result name (default: the dataset's)")
    parser.add_argument("--set", action="append", default=[], help="base config override, key=value")
    parser.add_argument("--seeds", default="0,1,2", help="seeds of the final runs")
    parser.add_argument("--systems", default=",".join(PEER_GRID), help="peers to run")
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
        "--quick", action="store_true", help="first grid setting of each system only; writes *.quick.json"
    )
    parser.add_argument("--out", type=Path, default=None, help="result JSON path")
    parser.add_argument(
        "--table", action="store_true", help="print the README tables from peers.json, redraw peers.png"
    )
    return parser.parse_args(argv)


# --- the peers' virtualenv ------------------------------------------------------------------


def peers_python() -> Path:
    """The peers virtualenv's Python, created and filled on first use."""
    python = PEERS_VENV / "bin" / "python"
    marker = PEERS_VENV / ".raymm-peers-ready"
    if marker.is_file():
        return python
    if not python.is_file():
        log(BENCH, f"creating {PEERS_VENV.relative_to(ROOT)}")
        subprocess.run([sys.executable, "-m", "venv", str(PEERS_VENV)], check=True)
    pip = [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    log(BENCH, f"installing {', '.join(PEERS_REQUIREMENTS)} into the peers virtualenv (minutes)")
    subprocess.run([*pip, *PEERS_REQUIREMENTS], check=True, stdout=sys.stderr)
    subprocess.run([*pip, "--no-deps", *PEERS_NO_DEPS], check=True, stdout=sys.stderr)
    _skip_graphbolt(python)
    marker.write_text(" ".join(PEERS_REQUIREMENTS + PEERS_NO_DEPS) + "\n")
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


def peer_scorer(
    export: Export, setup: EvalSetup, job_id: str, meta: dict[str, Any], popularity: PopularityScorer
) -> PrecomputedScorer:
    """A job's scores as a raymm scorer over the catalog; unknown users get ``popularity``."""
    matrix = np.load(export.root / "scores" / f"{job_id}.npy")
    columns = export.catalog_columns(setup)
    scores = np.full((matrix.shape[0], setup.catalog.n_items), np.float32(-3.0e38), dtype=np.float32)
    inside = columns >= 0
    scores[:, columns[inside]] = matrix[:, inside]
    # Items of the catalog the peer never scored rank below every scored one.
    user_ids = [export.user_ids[u] for u in meta["users"]]
    return PrecomputedScorer(job_id, user_ids, scores, fallback=popularity)


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
    from raymm.train.trainer import train

    storage = out.parent / f"{out.name}-checkpoints"
    document = config.model_dump(mode="json", by_alias=True)
    variant = config_from_dict(
        apply_overrides(document, [*overrides, f"train.storage_path={storage}"]), "peers raymm"
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
    """The artifact's served recommender for validation (popularity on train) and test
    (train+validation), with the fallback settings training chose on validation
    (:func:`~raymm.eval.evaluate.served_scorer`)."""
    artifact = load_artifact(str(model_dir), expected_dims=setup.catalog.dims)
    test, shrinkage = served_scorer(artifact, setup, KS)
    half_life = test.popularity.half_life_days
    validation = FallbackScorer(
        test.primary, PopularityScorer(half_life_days=half_life).fit(setup.train_context), shrinkage
    )
    return validation, test


# --- scoring --------------------------------------------------------------------------------


def score(scorer: Scorer, setup: EvalSetup, users: EvalUsers) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    return per_user_metrics(scorer, users, (K,), setup.catalog.n_items)


def cold_recall(scorer: Scorer, setup: EvalSetup) -> float | None:
    protocol = setup.protocols.get("cold_start")
    if protocol is None:
        return None
    _, values = per_user_metrics(
        scorer, protocol.users, KS, setup.catalog.n_items, protocol.candidates, protocol.recency
    )
    return float(values[f"recall@{K}"].mean())


class Record:
    """One system's results: the grid on validation, then per seed on test."""

    def __init__(self, system: str, kind: str) -> None:
        self.system, self.kind = system, kind
        self.grid: list[dict[str, Any]] = []
        self.best: dict[str, Any] | None = None
        self.seeds: list[int] = []
        self.test: list[dict[str, float]] = []
        self.per_user: list[dict[str, np.ndarray]] = []
        self.user_ids: np.ndarray | None = None
        self.cold: list[float] = []
        self.fit_s: list[float] = []
        self.extra: dict[str, Any] = {}

    def add_test(self, seed: int, users: np.ndarray, values: dict[str, np.ndarray], fit_s: float) -> None:
        if self.user_ids is not None and not np.array_equal(users, self.user_ids):
            raise SystemExit(f"{self.system}: seeds scored different users")
        self.user_ids = users
        self.seeds.append(seed)
        self.per_user.append(values)
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
    overrides = list(args.set)
    prepared_s: dict[str, float] = {}
    if args.dataset == "synthetic":
        data, features = ensure_quickstart(QUICKSTART, BENCH)
        name = args.name or "synthetic"
    elif args.dataset == "ml100k":
        from fetch_ml100k import prepare

        data, features, prepared_s = prepare()
        name = args.name or "ml100k"
        overrides = ["train.modalities=[text]", *overrides]
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
    config = load_config(BASE_CONFIG, [f"out={work}", "ray.log_to_driver=false", *overrides])
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
    records: dict[str, Record] = {}

    # Recent popularity, its half-life chosen on validation as raymm's fallback chooses it: a
    # baseline of its own (how much of raymm's answer is the fallback), and the answer every
    # peer gives a user it never saw, as raymm gives its users without history.
    by_half_life = {
        half_life: float(
            score(
                PopularityScorer(half_life_days=half_life).fit(setup.train_context), setup, setup.validation
            )[1][f"ndcg@{K}"].mean()
        )
        for half_life in HALF_LIFE_GRID_DAYS
    }
    half_life = max(by_half_life, key=lambda h: by_half_life[h])
    # Peers: the grid on validation, then the best setting refit on train+validation per seed.
    train_popularity = PopularityScorer(half_life_days=half_life).fit(setup.train_context)
    popularity = PopularityScorer(half_life_days=half_life).fit(setup.context)
    grid_size = 1 if args.quick else args.grid_size
    jobs = [
        job
        for job in peer_jobs(export, setup, systems, vbpr_features)
        if int(job["id"].split("-g")[1].split("-")[0]) < grid_size
    ]
    metas = run_cornac(export, jobs)
    for job in jobs:
        record = records.setdefault(job["system"], Record(job["system"], "peer (Cornac 3.0.1)"))
        scorer = peer_scorer(export, setup, job["id"], metas[job["id"]], train_popularity)
        _, values = score(scorer, setup, setup.validation)
        record.grid.append(
            {
                "params": job["params"],
                "validation_ndcg@20": round(float(values[f"ndcg@{K}"].mean()), 4),
                "fit_s": metas[job["id"]]["fit_s"],
            }
        )
    test_ids = export.users(test_users.user_ids)
    finals = []
    # The headline peer (best on validation, MostPop aside) runs every seed; the others one.
    headline_peer = max(
        (r for r in records.values() if r.system != "MostPop"),
        key=lambda r: max(row["validation_ndcg@20"] for row in r.grid),
        default=None,
    )
    for system, record in records.items():
        best = max(record.grid, key=lambda row: row["validation_ndcg@20"])
        record.best = best["params"]
        if system == "VBPR":
            record.extra["features"] = vbpr_features
        for seed in seeds if record is headline_peer else seeds[:1]:
            finals.append(
                {
                    "id": f"{system}-best-{_digest(best['params'])}-s{seed}-test",
                    "system": system,
                    "params": best["params"],
                    "fit": ["train", "validation"],
                    "users": test_ids,
                    "seed": seed,
                    "features": vbpr_features,
                    "cross_check": system == CROSS_CHECK_SYSTEM and seed == seeds[0],
                }
            )
    final_metas = run_cornac(export, finals)
    for job in finals:
        record = records[job["system"]]
        scorer = peer_scorer(export, setup, job["id"], final_metas[job["id"]], popularity)
        users, values = score(scorer, setup, test_users)
        record.add_test(job["seed"], users, values, final_metas[job["id"]]["fit_s"])
        record.extra["test_users_unknown_to_it"] = len(test_ids) - len(final_metas[job["id"]]["users"])
    cross_check = None
    for job in finals:
        if job.get("cross_check"):
            cross_check = check_against_cornac(export, setup, job["id"], final_metas[job["id"]], popularity)

    # raymm: the grid on validation, the best refit per seed; ablations at the default settings.
    raymm = Record("raymm", "raymm (served: two-tower + popularity fallback)")
    models: dict[str, Path] = {}
    raymm_grid = RAYMM_GRID[:grid_size]
    for index, grid_overrides in enumerate(raymm_grid):
        out = work / "raymm" / f"g{index}-s{seeds[0]}"
        seconds = train_raymm(config, grid_overrides, data, features, out, args.reuse)
        models[f"g{index}"] = out
        validation_scorer, _ = raymm_scorers(out, setup)
        _, values = score(validation_scorer, setup, setup.validation)
        raymm.grid.append(
            {
                "overrides": list(grid_overrides),
                "validation_ndcg@20": round(float(values[f"ndcg@{K}"].mean()), 4),
                "fit_s": round(seconds, 1),
                **_curve(out),
            }
        )
        log(BENCH, f"raymm grid {index} {list(grid_overrides)}: {raymm.grid[-1]['validation_ndcg@20']}")
    best_index = max(range(len(raymm_grid)), key=lambda i: raymm.grid[i]["validation_ndcg@20"])
    raymm.best = {"overrides": list(RAYMM_GRID[best_index])}
    for seed in seeds:
        out = work / "raymm" / f"g{best_index}-s{seed}"
        seconds = raymm.grid[best_index]["fit_s"]
        if seed != seeds[0]:
            seconds = train_raymm(
                config, (*RAYMM_GRID[best_index], f"seed={seed}"), data, features, out, args.reuse
            )
        _, test_scorer = raymm_scorers(out, setup)
        users, values = score(test_scorer, setup, test_users)
        raymm.add_test(seed, users, values, seconds)
        recall = cold_recall(test_scorer, setup)
        if recall is not None:
            raymm.cold.append(recall)
    records["raymm"] = raymm

    # Training-free baselines on the same users, and the ablation variants.
    for baseline in (PopularityScorer(), ContentScorer()):
        record = Record(baseline.name, "baseline (training-free)")
        fitted = baseline.fit(setup.context)
        users, values = score(fitted, setup, test_users)
        record.add_test(seeds[0], users, values, 0.0)
        recall = cold_recall(fitted, setup)
        if recall is not None:
            record.cold.append(recall)
        records[baseline.name] = record
    recent = Record("recent popularity", "baseline (training-free; half-life chosen on validation)")
    recent.grid = [{"half_life_days": h, "validation_ndcg@20": round(v, 4)} for h, v in by_half_life.items()]
    recent.best = {"half_life_days": half_life}
    fitted = PopularityScorer(half_life_days=half_life).fit(setup.context)
    users, values = score(fitted, setup, test_users)
    recent.add_test(seeds[0], users, values, 0.0)
    records[recent.system] = recent
    if not args.no_ablation and "image" in setup.catalog.features:
        for variant, variant_overrides in SYNTHETIC_ABLATION.items():
            out = work / "raymm" / f"ablation-{variant}"
            seconds = train_raymm(config, variant_overrides, data, features, out, args.reuse)
            record = Record(f"raymm {variant}", "raymm ablation (default settings, one seed)")
            _, test_scorer = raymm_scorers(out, setup)
            users, values = score(test_scorer, setup, test_users)
            record.add_test(seeds[0], users, values, seconds)
            recall = cold_recall(test_scorer, setup)
            if recall is not None:
                record.cold.append(recall)
            records[record.system] = record

    oracle: dict[str, float] | None = None
    if oracle_scorer is not None:
        record = Record("oracle", "the generator's true affinity (upper bound)")
        users, values = score(oracle_scorer, setup, test_users)
        record.add_test(seeds[0], users, values, 0.0)
        recall = cold_recall(oracle_scorer, setup)
        if recall is not None:
            record.cold.append(recall)
        oracle = {m: record.test[0][m] for m in METRICS}
        records["oracle"] = record

    summaries = {name: record.summary(oracle) for name, record in records.items()}
    for summary in summaries.values():
        print(json.dumps({"dataset": name, **summary}, default=float), flush=True)
    peers_only = [
        r for r in records.values() if r.kind.startswith("peer") and r.system != "MostPop" and r.grid
    ]
    best_peer = max(peers_only, key=lambda r: max(row["validation_ndcg@20"] for row in r.grid))
    comparisons = {
        f"raymm vs {best_peer.system} (best peer on validation)": _paired(raymm, best_peer),
        "raymm vs popularity": _paired(raymm, records["popularity"]),
        "raymm vs recent popularity": _paired(raymm, records["recent popularity"]),
        "raymm vs MostPop (Cornac)": _paired(raymm, records["MostPop"]) if "MostPop" in records else None,
    }
    best_test_peer = max(peers_only, key=lambda r: float(np.mean([row[f"ndcg@{K}"] for row in r.test])))
    if best_test_peer is not best_peer:
        comparisons[f"raymm vs {best_test_peer.system} (best peer on test, for information)"] = _paired(
            raymm, best_test_peer
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
        "tuning on validation only, peers refit on train+validation for test",
        "users": {
            "test": int((test_users.truth.sizes > 0).sum()),
            "test_without_history": int(
                ((test_users.truth.sizes > 0) & (test_users.history_length == 0)).sum()
            ),
            "validation": int((setup.validation.truth.sizes > 0).sum()),
        },
        "n_items": setup.catalog.n_items,
        "k": K,
        "grid_size": grid_size,
        "cores": os.cpu_count(),
        "systems": summaries,
        "best_peer_on_validation": best_peer.system,
        "comparisons": comparisons,
        "raymm_at_least_popularity": bool(
            summaries["raymm"]["test"][f"recall@{K}"]["mean"]
            >= summaries["popularity"]["test"][f"recall@{K}"]["mean"]
            and summaries["raymm"]["test"][f"ndcg@{K}"]["mean"]
            >= summaries["popularity"]["test"][f"ndcg@{K}"]["mean"]
        ),
        "cross_check": cross_check,
        "notes": [
            "a peer's user unknown to it (no positive before the evaluated period) gets recent"
            " popularity's ranking, its half-life chosen on validation (the 'recent popularity' row),"
            " as raymm's users without history get it",
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
    from raymm.recommend.itemsets import ItemSets

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
    """Merge one dataset's summary into bench/results/peers.json."""
    path = RESULTS / "peers.json"
    merged = json.loads(path.read_text()) if path.is_file() else {"bench": "peers", "datasets": {}}
    systems = document["systems"]
    merged["datasets"][name] = {
        "date": document["date"],
        "file": f"bench/results/peers.{name}.json",
        "users": document["users"],
        "table": {
            system: {
                **{m: summary["test"][m] for m in METRICS},
                "cold_start_recall@20": summary["cold_start_recall@20"],
                "fit_s": summary["fit_s"],
                "oracle_fraction": summary.get("oracle_fraction"),
            }
            for system, summary in systems.items()
        },
        "comparisons": {
            key: None
            if value is None
            else {
                m: {k: value[m][k] for k in ("mean_difference", "sign_flip_p", "first_better")} for m in value
            }
            for key, value in document["comparisons"].items()
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
    "raymm text",
    "raymm concat",
    "LightGCN",
    "BPR",
    "VBPR",
    "CTR",
    "MostPop",
    "popularity",
    "recent popularity",
    "content",
)


def _ordered(table: dict[str, Any]) -> list[str]:
    return [s for s in ORDER if s in table] + [s for s in table if s not in ORDER]


def plot(merged: dict[str, Any], out: Path) -> None:
    """Recall@20 and NDCG@20 per system and dataset, mean +- sd over the seeds, as one PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    datasets = list(merged["datasets"])
    figure, axes = plt.subplots(len(datasets), 1, figsize=(10, 3.6 * len(datasets)), squeeze=False)
    for axis, name in zip(axes[:, 0], datasets, strict=True):
        table = merged["datasets"][name]["table"]
        systems = _ordered(table)
        x = np.arange(len(systems))
        for offset, metric in ((-0.2, f"recall@{K}"), (0.2, f"ndcg@{K}")):
            means = [table[s][metric]["mean"] for s in systems]
            errors = [table[s][metric]["sd"] for s in systems]
            axis.bar(x + offset, means, 0.4, yerr=errors, capsize=3, label=metric)
        axis.set_xticks(x, systems, rotation=30, ha="right")
        axis.set_title(f"{name}: test split, raymm's evaluator (error bars: sd over seeds)")
        axis.legend()
    figure.tight_layout()
    figure.savefig(out, dpi=90)
    plt.close(figure)


def markdown(merged: dict[str, Any]) -> str:
    """One README table per dataset from bench/results/peers.json."""
    lines = []
    for name, entry in merged["datasets"].items():
        lines += [
            f"**{name}** ({entry['file']}, {entry['date'][:10]}; test users {entry['users']['test']}, "
            f"{entry['users']['test_without_history']} without history; mean +- sd over seeds)",
            "",
            "| system | Recall@20 | NDCG@20 | HitRate@20 | cold-start Recall@20 | fit s (2 cores) | of oracle R@20 |",
            "|---|---|---|---|---|---|---|",
        ]
        for system in _ordered(entry["table"]):
            row = entry["table"][system]

            def cell(value: dict[str, Any] | None) -> str:
                if value is None:
                    return "n/a"
                return f"{value['mean']:.4f}" + (f" +- {value['sd']:.4f}" if value["n"] > 1 else "")

            fraction = (row.get("oracle_fraction") or {}).get(f"recall@{K}")
            lines.append(
                f"| {system} | {cell(row[f'recall@{K}'])} | {cell(row[f'ndcg@{K}'])} | "
                f"{cell(row[f'hit_rate@{K}'])} | {cell(row['cold_start_recall@20'])} | "
                f"{row['fit_s']['mean']:.0f} | {'' if fraction is None else f'{fraction:.2f}'} |"
            )
        lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
