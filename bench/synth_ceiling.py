"""How much of the synthetic oracle can any recommender reach from a user's history window?

The question (issue 24's target of 0.65 of the oracle's Recall@20): the oracle ranks by the
generator's true affinity, which needs each user's preferences and each item's true facets. A
recommender sees neither; it sees the history and the content, which shows each facet through a
noisy renderer (``synth.noise``: a shown facet is replaced by a random value with that
probability) and lacks missing modalities. This benchmark separates the two losses with one simple
estimator, the same for every row:

    user = mean of the history window's item rows;  score(item) = user . row(item) + beta * log popularity

with ``beta`` (and nothing else) chosen on validation, scored on the test protocol of
``raymm evaluate`` (history train + validation, truth the test positives, seen items excluded).
The item rows, one per reading:

* ``exact facets``: the generator's true facet values, one-hot. No content model can know these;
  this row is what the history alone allows.
* ``facets read from content``: a logistic-regression probe per facet on the extracted features
  of the modalities that show it (standardised and side by side; absent modalities zero), fitted
  with the true facets on one half of the items and reading the other half (cross-fitted); the
  rows are its class probabilities, or its predicted value one-hot. It uses the truth to learn the read-out, so it is a generous
  reference for what the content shows, not a model anyone could ship.

Also reported: each probe's held-out accuracy per facet beside the best any reader could reach
given the noise and the missing modalities: ``(1 - hidden) * ((1 - noise) + noise / values) +
hidden / values``, ``hidden`` the share of items with none of the modalities that show the facet. raymm's own served score is in
``bench/results/peers.synthetic.json`` (same split, same protocol).

Prints one JSON line and writes ``bench/results/synth_ceiling.json``.

    .venv/bin/python bench/synth_ceiling.py        # out/quickstart (small), made if absent
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

import numpy as np
from _shared import BASE_CONFIG, QUICKSTART, ensure_quickstart, finish, log
from _shared.quality import PACKAGE_TRAINING, K, score, validation_ndcg
from sklearn.linear_model import LogisticRegression

from raymm.config import load_config
from raymm.data.dataset import MANIFEST
from raymm.eval.evaluate import EvalSetup, eval_setup
from raymm.eval.oracle import FACET_COLUMNS, OracleScorer, load_oracle
from raymm.recommend.history import EvalUsers
from raymm.recommend.scorers import PrecomputedScorer

BENCH = "synth_ceiling"
BETA_GRID = (0.0, 0.01, 0.03, 0.1, 0.3, 1.0, 3.0)
PROBE_C_GRID = (0.0003, 0.001, 0.003, 0.01, 0.03)


def history_mean_scores(
    rows: np.ndarray, users: EvalUsers, log_popularity: np.ndarray, beta: float
) -> np.ndarray:
    """(U, N): each user's mean history row against every item's row, plus beta x log popularity."""
    history = users.history
    valid = history >= 0
    summed = np.zeros((len(history), rows.shape[1]))
    for column in range(history.shape[1]):
        present = valid[:, column]
        summed[present] += rows[history[present, column]]
    means = summed / np.maximum(valid.sum(axis=1, keepdims=True), 1)
    return (means @ rows.T + beta * log_popularity[None, :]).astype(np.float32)


def evaluate_rows(
    name: str, rows: np.ndarray, setup: EvalSetup, log_popularity: np.ndarray
) -> dict[str, Any]:
    """beta chosen on validation NDCG@20, then the test protocol's means."""
    validation = setup.validation
    by_beta = {
        beta: validation_ndcg(
            PrecomputedScorer(
                name, list(validation.user_ids), history_mean_scores(rows, validation, log_popularity, beta)
            ),
            setup,
        )
        for beta in BETA_GRID
    }
    beta = max(by_beta, key=lambda b: by_beta[b])
    test = setup.protocols["test"].users
    _, metrics = score(
        PrecomputedScorer(name, list(test.user_ids), history_mean_scores(rows, test, log_popularity, beta)),
        setup,
        test,
    )
    return {
        "beta": beta,
        "validation_ndcg@20": round(by_beta[beta], 4),
        "test": {m: round(float(metrics[m].mean()), 4) for m in (f"recall@{K}", f"ndcg@{K}")},
    }


def standardised_features(setup: EvalSetup, modalities: list[str]) -> np.ndarray:
    """``modalities``' features standardised over the items that have them, absent rows zero, side by side."""
    blocks = []
    for modality in modalities:
        x = setup.catalog.features[modality].numpy().astype(np.float64)
        present = setup.catalog.present[modality].numpy()
        x = (x - x[present].mean(axis=0)) / (x[present].std(axis=0) + 1e-6)
        x[~present] = 0.0
        blocks.append(x)
    return np.concatenate(blocks, axis=1)


def probe(
    setup: EvalSetup, codes: np.ndarray, shown_in: dict[str, list[str]]
) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Cross-fitted readings of every facet from the features of the modalities that show it (one
    half of the items fits, the other is read, and back): as class probabilities and as the
    predicted class one-hot, in the one-hot layout of ``codes``; and each facet's held-out
    accuracy. The regularisation C per facet is chosen on the first half's held-out accuracy."""
    n = len(codes)
    halves = np.arange(n) % 2 == 0
    width = int(codes.max()) + 1
    soft, hard = np.zeros((n, width)), np.zeros((n, width))
    accuracy: dict[str, Any] = {}
    for facet, name in enumerate(FACET_COLUMNS):
        features = standardised_features(setup, shown_in[name])
        y = codes[:, facet]
        by_c = {}
        for c in PROBE_C_GRID:
            model = LogisticRegression(max_iter=500, C=c).fit(features[halves], y[halves])
            by_c[c] = float((model.predict(features[~halves]) == y[~halves]).mean())
        c = max(by_c, key=lambda value: by_c[value])
        for fit, read in ((halves, ~halves), (~halves, halves)):
            model = LogisticRegression(max_iter=500, C=c).fit(features[fit], y[fit])
            soft[np.ix_(read, model.classes_)] = model.predict_proba(features[read])
            hard[np.flatnonzero(read), model.predict(features[read])] = 1.0
        accuracy[name] = {"held_out_accuracy": round(by_c[c], 3), "C": c}
    return {"probabilities": soft, "predicted value": hard}, accuracy


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.parse_args(argv)
    started = time.perf_counter()
    data, features_dir = ensure_quickstart(QUICKSTART, BENCH)
    config = load_config(BASE_CONFIG, [f"out={QUICKSTART}", *PACKAGE_TRAINING])
    setup = eval_setup(config, str(data), str(features_dir))
    oracle = load_oracle(str(data))
    if oracle is None:
        raise SystemExit(f"{data} has no oracle (not a synthetic dataset made with one)")
    oracle_scorer = OracleScorer(oracle, setup.catalog)
    codes = oracle_scorer.codes  # (N, F) columns of the one-hot layout, catalog order
    log_popularity = oracle_scorer.bias / oracle.popularity_bias
    exact = np.zeros((len(codes), oracle.preferences.shape[1]))
    for facet in range(codes.shape[1]):
        exact[np.arange(len(codes)), codes[:, facet]] = 1.0

    manifest = json.loads((data / MANIFEST).read_text())
    shown_in = {name: manifest["facets"][name]["modalities"] for name in FACET_COLUMNS}
    log(BENCH, "probing the extracted features for each facet")
    read, accuracy = probe(setup, codes, shown_in)
    noise = float(manifest["synth_config"]["noise"])
    for name in FACET_COLUMNS:
        values = int(manifest["facets"][name]["cardinality"])
        # No modality showing it: a guess. One or more: right unless the renderer's noise replaced it.
        hidden = float(np.prod([manifest["missing"][m] / manifest["n_items"] for m in shown_in[name]]))
        accuracy[name].update(
            values=values,
            shown_in=shown_in[name],
            ceiling=round((1 - hidden) * ((1 - noise) + noise / values) + hidden / values, 3),
        )

    _, oracle_metrics = score(oracle_scorer, setup, setup.protocols["test"].users)
    oracle_test = {m: round(float(oracle_metrics[m].mean()), 4) for m in (f"recall@{K}", f"ndcg@{K}")}
    readings = {}
    rows_by_reading = {
        "exact facets": exact,
        **{f"facets read from content ({kind})": rows for kind, rows in read.items()},
    }
    for name, rows in rows_by_reading.items():
        log(BENCH, f"history-mean estimator on {name}")
        result = evaluate_rows(name, rows, setup, log_popularity)
        result["oracle_fraction"] = {m: round(result["test"][m] / oracle_test[m], 3) for m in oracle_test}
        readings[name] = result
    return finish(
        BENCH,
        {
            "question": "what fraction of the synthetic oracle a history-window estimator reaches with exact "
            "facets and with facets as the extracted content shows them",
            "dataset": "synthetic small (out/quickstart)",
            "estimator": "mean history row . item row + beta * log popularity, beta on validation",
            "k": K,
            "noise": noise,
            "missing_modalities": manifest["missing"],
            "oracle": {"test": oracle_test},
            "readings": readings,
            "probe_accuracy": accuracy,
            "wall_s": round(time.perf_counter() - started, 1),
        },
    )


if __name__ == "__main__":
    main()
