"""Where raymm's shortfall against the peers lies: by the user's history length and by the test item's popularity.

Reads what ``bench/peers.py`` saved of every system's test run in ``out/peers/<dataset>/``:
``per_user.parquet`` (user_id, system, table, seed, history_length, recall@20, ndcg@20) and
``hits.parquet`` (one row per held-out (user, item) pair: item_count, the item's counting events
before the test period, i.e. in what test-time models are fitted on, and whether the system put it
in the user's top 20). For each dataset, table ("blended", "plain") and peer of
:data:`PEERS` that ran:

* **by history length** (:data:`HISTORY_BUCKETS`, counting events before the test period): users,
  raymm's and the peer's mean NDCG@20 and Recall@20 (each user's value averaged over the system's
  seeds first), the difference, and the bucket's share of the whole shortfall (sum of per-user
  differences in the bucket / sum over all users; signed, so shares may exceed 1 or be negative);
* **by test-item popularity**, warm users only (history > 0): the held-out pairs split into
  :data:`POPULARITY_BUCKETS` quantile buckets of item_count (edges over the warm users' pairs);
  per bucket the share of pairs each system hits in its top 20 (micro Recall@20; averaged over
  seeds), and the difference.

Writes ``bench/results/peers_breakdown.json`` and ``bench/results/peers_breakdown.png`` (the
blended table's NDCG@20 and hit-rate differences) and prints one JSON line. Results carry no
machine paths.

    .venv/bin/python bench/peers_breakdown.py                       # synthetic and ml100k
    .venv/bin/python bench/peers_breakdown.py --datasets ml100k --work-root out/peers
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
from _shared import RESULTS, ROOT, finish, log

BENCH = "peers_breakdown"
K = 20
#: Peers raymm is set against (those that ran), and recent popularity alone: on MovieLens the
#: served model must beat it on users with history too, not only on all users.
PEERS = ("LightGCN", "BPR", "EASE", "ItemKNN", "GRU4Rec", "SASRec", "recent popularity")
#: (label, lowest, highest) history lengths, inclusive; None: no upper bound.
HISTORY_BUCKETS: tuple[tuple[str, int, int | None], ...] = (
    ("0", 0, 0),
    ("1-4", 1, 4),
    ("5-19", 5, 19),
    ("20-49", 20, 49),
    ("50+", 50, None),
)
#: Quantile buckets of the test items' training counts.
POPULARITY_BUCKETS = 5


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--datasets", default="synthetic,ml100k", help="names under --work-root")
    parser.add_argument("--work-root", type=Path, default=ROOT / "out" / "peers", help="peers.py's work root")
    parser.add_argument("--out", type=Path, default=RESULTS / f"{BENCH}.json")
    return parser.parse_args(argv)


def _per_user_means(table: Any, system: str, which: str) -> dict[str, dict[str, float]]:
    """user_id -> {metric: mean over the system's seeds, history_length}."""
    rows = [r for r in table if r["system"] == system and r["table"] == which]
    grouped: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        grouped.setdefault(row["user_id"], []).append(row)
    return {
        user: {
            "history_length": float(group[0]["history_length"]),
            **{m: float(np.mean([r[m] for r in group])) for m in (f"recall@{K}", f"ndcg@{K}")},
        }
        for user, group in grouped.items()
    }


def _bucket(length: float) -> str:
    for label, low, high in HISTORY_BUCKETS:
        if length >= low and (high is None or length <= high):
            return label
    raise ValueError(length)


def by_history(raymm: dict[str, dict[str, float]], peer: dict[str, dict[str, float]]) -> list[dict[str, Any]]:
    users = sorted(raymm)
    if set(users) != set(peer):
        raise SystemExit("raymm and the peer were scored on different users")
    total = {m: sum(raymm[u][m] - peer[u][m] for u in users) for m in (f"recall@{K}", f"ndcg@{K}")}
    out = []
    for label, _, _ in HISTORY_BUCKETS:
        chosen = [u for u in users if _bucket(raymm[u]["history_length"]) == label]
        row: dict[str, Any] = {"history": label, "users": len(chosen)}
        for metric in (f"ndcg@{K}", f"recall@{K}"):
            first = np.array([raymm[u][metric] for u in chosen])
            second = np.array([peer[u][metric] for u in chosen])
            difference = float((first - second).sum())
            row[metric] = {
                "raymm": round(float(first.mean()), 4) if chosen else None,
                "peer": round(float(second.mean()), 4) if chosen else None,
                "difference": round(difference / len(chosen), 4) if chosen else None,
                "share_of_total_difference": round(difference / total[metric], 3) if total[metric] else None,
            }
        out.append(row)
    return out


def _hit_rates(hits: Any, system: str, which: str) -> dict[tuple[str, str], tuple[float, float, float]]:
    """(user_id, item_id) -> (hit rate over the system's seeds, item_count, history_length)."""
    grouped: dict[tuple[str, str], list[Any]] = {}
    for row in hits:
        if row["system"] == system and row["table"] == which:
            grouped.setdefault((row["user_id"], row["item_id"]), []).append(row)
    return {
        key: (
            float(np.mean([r["hit"] for r in group])),
            float(group[0]["item_count"]),
            float(group[0]["history_length"]),
        )
        for key, group in grouped.items()
    }


def popularity_edges(pairs: dict[tuple[str, str], tuple[float, float, float]]) -> np.ndarray:
    """Quantile edges of item_count over the warm users' held-out pairs (distinct edges)."""
    counts = np.array([count for _, count, history in pairs.values() if history > 0])
    if counts.size == 0:
        return np.array([0.0, 0.0])
    return np.unique(np.quantile(counts, np.linspace(0, 1, POPULARITY_BUCKETS + 1)))


def by_popularity(
    raymm: dict[tuple[str, str], tuple[float, float, float]],
    peer: dict[tuple[str, str], tuple[float, float, float]],
    edges: np.ndarray,
) -> list[dict[str, Any]]:
    keys = sorted(k for k, (_, _, history) in raymm.items() if history > 0)
    counts = np.array([raymm[k][1] for k in keys])
    first = np.array([raymm[k][0] for k in keys])
    second = np.array([peer[k][0] for k in keys])
    # Bucket b holds counts in [edges[b], edges[b + 1]), the last one closed.
    index = np.clip(np.searchsorted(edges, counts, side="right") - 1, 0, max(len(edges) - 2, 0))
    out = []
    for bucket in range(max(len(edges) - 1, 1)):
        chosen = index == bucket
        n = int(chosen.sum())
        out.append(
            {
                "item_count": [
                    round(float(edges[bucket]), 2),
                    round(float(edges[min(bucket + 1, len(edges) - 1)]), 2),
                ],
                "pairs": n,
                "hit_rate_raymm": round(float(first[chosen].mean()), 4) if n else None,
                "hit_rate_peer": round(float(second[chosen].mean()), 4) if n else None,
                "difference": round(float((first[chosen] - second[chosen]).mean()), 4) if n else None,
            }
        )
    return out


def breakdown(work: Path) -> dict[str, Any]:
    per_user = pq.read_table(work / "per_user.parquet").to_pylist()
    hits_path = work / "hits.parquet"
    hits = pq.read_table(hits_path).to_pylist() if hits_path.is_file() else []
    systems = {row["system"] for row in per_user}
    peers = [p for p in PEERS if p in systems]
    tables: dict[str, Any] = {}
    for which in ("blended", "plain"):
        raymm = _per_user_means(per_user, "raymm", which)
        if not raymm:
            continue
        raymm_hits = _hit_rates(hits, "raymm", which) if hits else {}
        edges = popularity_edges(raymm_hits) if raymm_hits else np.array([])
        entry: dict[str, Any] = {"by_history": {}, "by_item_popularity": {}, "overall": {}}
        for peer in peers:
            peer_users = _per_user_means(per_user, peer, which)
            entry["by_history"][peer] = by_history(raymm, peer_users)
            entry["overall"][peer] = {
                metric: {
                    "all": round(
                        float(np.mean([raymm[u][metric] - peer_users[u][metric] for u in raymm])), 4
                    ),
                    "warm": round(
                        float(
                            np.mean(
                                [
                                    raymm[u][metric] - peer_users[u][metric]
                                    for u in raymm
                                    if raymm[u]["history_length"] > 0
                                ]
                                or [np.nan]
                            )
                        ),
                        4,
                    ),
                }
                for metric in (f"ndcg@{K}", f"recall@{K}")
            }
            if raymm_hits:
                entry["by_item_popularity"][peer] = by_popularity(
                    raymm_hits, _hit_rates(hits, peer, which), edges
                )
        tables[which] = entry
    users = _per_user_means(per_user, "raymm", "blended")
    return {
        "users": len(users),
        "warm_users": sum(1 for u in users.values() if u["history_length"] > 0),
        "peers": peers,
        "tables": tables,
    }


def plot(datasets: dict[str, Any], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [n for n in datasets if "blended" in datasets[n]["tables"]]
    if not names:
        return
    figure, axes = plt.subplots(len(names), 2, figsize=(13, 3.8 * len(names)), squeeze=False)
    for row, name in enumerate(names):
        entry = datasets[name]["tables"]["blended"]
        peers = list(entry["by_history"])
        width = 0.8 / max(len(peers), 1)
        first = next(iter(entry["by_history"].values()), [])
        labels = [f"{r['history']}\n({r['users']} users)" for r in first]
        for index, peer in enumerate(peers):
            values = [r[f"ndcg@{K}"]["difference"] or 0.0 for r in entry["by_history"][peer]]
            axes[row, 0].bar(np.arange(len(labels)) + index * width, values, width, label=peer)
        axes[row, 0].set_xticks(np.arange(len(labels)) + width * (len(peers) - 1) / 2, labels)
        axes[row, 0].axhline(0, color="black", linewidth=0.6)
        axes[row, 0].set_title(f"{name}: raymm - peer, NDCG@20, by history length (blended)")
        axes[row, 0].set_xlabel("counting events before the test period")
        axes[row, 0].legend(fontsize=7)
        for index, peer in enumerate(entry["by_item_popularity"]):
            rows = entry["by_item_popularity"][peer]
            values = [r["difference"] or 0.0 for r in rows]
            axes[row, 1].bar(np.arange(len(rows)) + index * width, values, width, label=peer)
            axes[row, 1].set_xticks(
                np.arange(len(rows)) + width * (len(peers) - 1) / 2,
                [f"{r['item_count'][0]:g}-{r['item_count'][1]:g}\n({r['pairs']} pairs)" for r in rows],
            )
        axes[row, 1].axhline(0, color="black", linewidth=0.6)
        axes[row, 1].set_title(f"{name}: raymm - peer, hit rate@20 by test item's count (warm users)")
        axes[row, 1].set_xlabel("item's counting events before the test period (quantile buckets)")
    figure.tight_layout()
    figure.savefig(out, dpi=90)
    plt.close(figure)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    datasets: dict[str, Any] = {}
    for name in [n for n in args.datasets.split(",") if n]:
        work = args.work_root / name
        if not (work / "per_user.parquet").is_file():
            log(BENCH, f"{name}: no per_user.parquet under the work root (run bench/peers.py first); skipped")
            continue
        datasets[name] = {"source": f"bench/results/peers.{name}.json", **breakdown(work)}
    if not datasets:
        raise SystemExit("no dataset had per-user results")
    report = {
        "history_buckets": [label for label, _, _ in HISTORY_BUCKETS],
        "popularity_buckets": POPULARITY_BUCKETS,
        "k": K,
        "datasets": datasets,
    }
    png = args.out.with_suffix(".png")
    plot(datasets, png)
    return finish(BENCH, report, args.out)


if __name__ == "__main__":
    main()
