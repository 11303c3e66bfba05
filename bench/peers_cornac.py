"""Cornac's side of bench/peers.py: fit peer models, write their score matrices. Runs in bench/.venv-peers.

This file imports only numpy and Cornac (``cornac==3.0.1``), never raymm: peers.py runs it with
the peers virtualenv's Python so raymm's dependencies stay clean. Input is the directory
peers.py exported (``raymm data export --format mmrec`` plus ``positives.tsv``,
``item_text.tsv`` and ``jobs.json``); output, per job, ``<job>.npy``: float32 (users, items),
row r the score of user ``users[r]`` for each MMRec itemID (column = itemID). Items the model
never saw get a score below every seen item's (the bottom of the ranking, as Cornac's own
``rank`` puts them). Users the model never saw get no row; peers.py gives them MostPop's answer,
as raymm gives its users without history popularity.

Each job: ``{"id", "system", "params", "fit": ["train"] or ["train", "validation"], "users":
[userID, ...], "seed", "features": "image"|"text"|null, "cross_check": bool}``. With
``cross_check``, Cornac's own ``ranking_eval`` (Recall@20, NDCG@20) scores the fitted model on
the test split, and the per-user values go to ``<job>.cornac_eval.json``.

    bench/.venv-peers/bin/python bench/peers_cornac.py EXPORT_DIR
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np


def read_positives(export: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(userID, itemID, x_label) of every positive interaction, in the order written."""
    data = np.loadtxt(export / "positives.tsv", dtype=np.int64, delimiter="\t", skiprows=1, ndmin=2)
    return data[:, 0], data[:, 1], data[:, 2]


def build_model(system: str, params: dict[str, Any], seed: int) -> Any:
    from cornac.models import BPR, CTR, VBPR, LightGCN, MostPop

    if system == "MostPop":
        return MostPop()
    if system == "BPR":
        return BPR(seed=seed, verbose=False, **params)
    if system == "LightGCN":
        return LightGCN(seed=seed, verbose=False, **params)
    if system == "VBPR":
        return VBPR(seed=seed, verbose=False, **params)
    if system == "CTR":
        return CTR(seed=seed, verbose=False, **params)
    raise SystemExit(f"unknown peer system {system!r}")


def train_set(job: dict[str, Any], export: Path, positives: tuple[np.ndarray, ...]) -> Any:
    from cornac.data import Dataset, ImageModality, TextModality

    users, items, labels = positives
    fit_labels = [{"train": 0, "validation": 1}[split] for split in job["fit"]]
    keep = np.isin(labels, fit_labels)
    triples = [(str(u), str(i), 1.0) for u, i in zip(users[keep], items[keep], strict=True)]
    dataset = Dataset.from_uir(triples, seed=job["seed"])
    features = job.get("features")
    if job["system"] == "VBPR":
        matrix = np.load(export / f"{features}_feat.npy").astype(np.float32)
        ids = [str(i) for i in range(matrix.shape[0])]
        modality = ImageModality(features=matrix, ids=ids, normalized=True)
        modality.build(id_map=dataset.iid_map)
        dataset.add_modalities(item_image=modality)
    if job["system"] == "CTR":
        texts = (export / "item_text.tsv").read_text().splitlines()[1:]
        pairs = [line.split("\t", 1) for line in texts]
        modality = TextModality(
            corpus=[p[1] if len(p) > 1 else "" for p in pairs],
            ids=[p[0] for p in pairs],
            max_vocab=5000,
            max_doc_freq=0.5,
        )
        modality.build(id_map=dataset.iid_map)
        dataset.add_modalities(item_text=modality)
    return dataset


def scores(model: Any, dataset: Any, users: list[int], n_items: int) -> tuple[np.ndarray, list[int]]:
    """(known users, n_items) float32 scores by MMRec itemID, and the userIDs of the rows."""
    item_index = np.array([int(raw) for raw in dataset.iid_map], dtype=np.int64)
    item_pos = np.array(list(dataset.iid_map.values()), dtype=np.int64)
    rows, known = [], []
    for user in users:
        index = dataset.uid_map.get(str(user))
        if index is None:
            continue
        raw = np.asarray(model.score(index), dtype=np.float64)
        row = np.full(n_items, raw.min() - 1.0 if raw.size else 0.0)
        row[item_index] = raw[item_pos]
        rows.append(row.astype(np.float32))
        known.append(int(user))
    matrix = np.stack(rows) if rows else np.zeros((0, n_items), np.float32)
    return matrix, known


def cornac_eval(model: Any, dataset: Any, positives: tuple[np.ndarray, ...]) -> dict[str, Any]:
    """Cornac's own ranking_eval of ``model`` on the test split (known users and items only)."""
    from cornac.data import Dataset
    from cornac.eval_methods import ranking_eval
    from cornac.metrics import NDCG, Recall

    users, items, labels = positives
    test = labels == 2
    triples = [
        (str(u), str(i), 1.0)
        for u, i in zip(users[test], items[test], strict=True)
        if str(u) in dataset.uid_map and str(i) in dataset.iid_map
    ]
    test_set = Dataset.build(
        triples,
        fmt="UIR",
        global_uid_map=dataset.uid_map,
        global_iid_map=dataset.iid_map,
        exclude_unknowns=True,
    )
    metrics = [Recall(k=20), NDCG(k=20)]
    averages, per_user = ranking_eval(model, metrics, dataset, test_set, exclude_unknowns=True, verbose=False)
    reverse_users = {index: int(raw) for raw, index in dataset.uid_map.items()}
    return {
        "averages": {m.name: float(v) for m, v in zip(metrics, averages, strict=True)},
        "per_user": {
            m.name: {str(reverse_users[u]): float(v) for u, v in per_user[i].items()}
            for i, m in enumerate(metrics)
        },
        "known_items": [int(raw) for raw in dataset.iid_map],
    }


def main(export: Path) -> None:
    jobs = json.loads((export / "jobs.json").read_text())
    positives = read_positives(export)
    n_items = int(json.loads((export / "export.json").read_text())["items"])
    for job in jobs:
        out = export / "scores" / f"{job['id']}.npy"
        if out.is_file():
            continue
        started = time.perf_counter()
        dataset = train_set(job, export, positives)
        model = build_model(job["system"], job["params"], job["seed"])
        model.fit(dataset)
        fit_s = time.perf_counter() - started
        matrix, known = scores(model, dataset, job["users"], n_items)
        out.parent.mkdir(parents=True, exist_ok=True)
        np.save(out, matrix)
        meta = {
            "users": known,
            "fit_s": round(fit_s, 2),
            "score_s": round(time.perf_counter() - started - fit_s, 2),
        }
        if job.get("cross_check"):
            meta["cornac_eval"] = cornac_eval(model, dataset, positives)
        (export / "scores" / f"{job['id']}.json").write_text(json.dumps(meta))
        print(f"[peers_cornac] {job['id']}: fit {fit_s:.1f}s", file=sys.stderr, flush=True)


if __name__ == "__main__":
    main(Path(sys.argv[1]))
