"""Cornac's side of bench/peers.py: fit peer models, write their score matrices. Runs in bench/.venv-peers.

This file imports only numpy, scipy and Cornac (``cornac==3.0.1``), never raymm: peers.py runs it
with the peers virtualenv's Python so raymm's dependencies stay clean. Input is the directory
peers.py exported (``raymm data export --format mmrec`` plus ``positives.tsv`` with each
positive's split and time, ``item_text.tsv`` and ``jobs.json``); output, per job, ``<job>.npy``:
float32 (users, items), row r the score of user ``users[r]`` for each MMRec itemID (column =
itemID). Items the model never saw get a score below every seen item's (the bottom of the
ranking, as Cornac's own ``rank`` puts them). Users the model never saw (no positive in the fit
splits) get no row; peers.py gives them recent popularity's answer, as raymm gives its users
without history popularity.

Models: Cornac's MostPop, BPR, LightGCN, VBPR, CTR, EASE, GRU4Rec and SASRec as they are.
GRU4Rec and SASRec are next-item models (Cornac's ``NextItemRecommender``): each is trained on
one sequence per user (the user's positives in the fit splits, oldest first) and scores a user
from that same sequence, i.e. predicts what comes after the history the evaluated period starts
from. ItemKNN is :class:`ItemKNN` below: Cornac's ``ItemKNN`` is built for explicit ratings (its
cosine runs over co-rated entries only, and its score is the similarity-weighted *average* of
the user's ratings), so on implicit all-ones data every co-occurring pair has similarity 1 and
every reachable item scores 1; the class keeps Cornac's interface and computes the classic
implicit item-based top-N instead (Deshpande and Karypis 2004): cosine (or Jaccard) between
item columns, each item's ``k`` nearest neighbours kept, score = the sum of the similarities
between the item and the user's items.

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

#: Next-item models: trained on and scored from each user's ordered history.
SEQUENTIAL = ("SASRec", "GRU4Rec")


def read_positives(export: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(userID, itemID, x_label, ts in ms) of every positive interaction, in the order written
    (by user, then time, per split)."""
    data = np.loadtxt(export / "positives.tsv", dtype=np.int64, delimiter="\t", skiprows=1, ndmin=2)
    return data[:, 0], data[:, 1], data[:, 2], data[:, 3]


class ItemKNN:
    """Implicit item-based top-N kNN with Cornac's ``fit(train_set)`` / ``score(user_idx)``.

    ``similarity``: ``cosine`` (co-occurrences / sqrt(n_i n_j)) or ``jaccard`` (co-occurrences /
    (n_i + n_j - co-occurrences)) between the items' user columns; each item keeps its ``k``
    most similar other items; score(u, i) = sum over the user's items j of sim(i, j) where j is
    one of i's neighbours.
    """

    def __init__(self, k: int = 100, similarity: str = "cosine") -> None:
        if similarity not in ("cosine", "jaccard"):
            raise SystemExit(f"ItemKNN: unknown similarity {similarity!r}")
        self.k, self.similarity = k, similarity

    def fit(self, train_set: Any) -> ItemKNN:
        matrix = train_set.matrix.tocsr().astype(np.float32)
        matrix.data[:] = 1.0
        self.user_items = matrix
        co = (matrix.T @ matrix).toarray()
        counts = np.diag(co).copy()
        if self.similarity == "cosine":
            denominator = np.sqrt(np.outer(counts, counts))
        else:
            denominator = counts[:, None] + counts[None, :] - co
        similarity = np.divide(co, denominator, out=np.zeros_like(co), where=denominator > 0)
        np.fill_diagonal(similarity, 0.0)
        k = min(self.k, similarity.shape[0] - 1)
        if 0 < k < similarity.shape[0] - 1:
            # Row i: item i's neighbours; keep the k largest, zero the rest.
            cut = np.argpartition(-similarity, k, axis=1)[:, k:]
            np.put_along_axis(similarity, cut, 0.0, axis=1)
        # score(u) = user_items[u] @ neighbours.T: column i sums item i's neighbours the user has.
        self.neighbours_t = np.ascontiguousarray(similarity.T)
        return self

    def score(self, user_idx: int) -> np.ndarray:
        return np.asarray(self.user_items[user_idx] @ self.neighbours_t).ravel()


def build_model(system: str, params: dict[str, Any], seed: int) -> Any:
    from cornac.models import BPR, CTR, EASE, VBPR, GRU4Rec, LightGCN, MostPop, SASRec

    if system == "MostPop":
        return MostPop()
    if system == "EASE":
        return EASE(seed=seed, verbose=False, **params)
    if system == "ItemKNN":
        return ItemKNN(**params)
    if system == "SASRec":
        return SASRec(seed=seed, verbose=False, **params)
    if system == "GRU4Rec":
        return GRU4Rec(seed=seed, verbose=False, **params)
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

    users, items, labels, times = positives
    fit_labels = [{"train": 0, "validation": 1}[split] for split in job["fit"]]
    keep = np.isin(labels, fit_labels)
    if job["system"] in SEQUENTIAL:
        from cornac.data import SequentialDataset

        # One sequence per user (session id = user id): the fit splits' positives, oldest first.
        order = np.lexsort((np.arange(users.size)[keep], times[keep], labels[keep], users[keep]))
        rows = np.flatnonzero(keep)[order]
        quadruples = [(str(users[r]), str(users[r]), str(items[r]), int(times[r])) for r in rows]
        return SequentialDataset.build(quadruples, fmt="USIT", seed=job["seed"])
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
    sequences = None
    if hasattr(dataset, "chrono_user_session_data"):
        # The user's one session, in the order it was built (oldest first): what comes next.
        sequences = {
            user: [int(i) for i in dataset.uir_tuple[1][dataset.sessions[sessions[0]]]]
            for user, (sessions, _) in dataset.chrono_user_session_data.items()
        }
    rows, known = [], []
    for user in users:
        index = dataset.uid_map.get(str(user))
        if index is None:
            continue
        if sequences is None:
            raw = np.asarray(model.score(index), dtype=np.float64).ravel()
        else:
            raw = np.asarray(model.score(index, sequences[index]), dtype=np.float64).ravel()
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

    users, items, labels, _ = positives
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
