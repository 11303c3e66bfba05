"""Evaluation at scale: does ``raymm evaluate`` rank the ``large`` benchmark without a users x items matrix?

The evaluator ranks users 4096 at a time through the chunked ``top_k`` (items 16384 at a time),
so its memory should not grow with users x items. This script measures it on the ``large``
synthetic preset (100,000 items, 50,000 users, 60 events per user) and compares the peak
resident memory of ``raymm evaluate`` with the dense float32 (test users x items) score matrix
that a one-shot evaluation would build.

What runs, in a work directory (``--work``, default a temporary one under /tmp, deleted after):

1. **data**: ``synthesize`` of the ``large`` preset with ``synth.missing.image=1.0`` and
   ``synth.missing.audio=1.0``, so no PNG or WAV is rendered (100,000 of each would take far
   longer than the evaluation on 2 CPUs). Interactions, splits, cold items and facets are those
   of the real preset; only the media bytes are absent.
2. **features**: no encoders run (extracting 100,000 items on 2 CPUs is out of reach here); a
   features parquet in the features contract is written the way ``tests/fixtures.py::facet_dataset``
   does: noisy one-hots of the true facets each modality shows (text 22-d, image 12-d, audio
   13-d). Image and audio are given to every item, not nulled as the missing media would say:
   the evaluated model then reads all three modalities, as it would on the real benchmark where
   most items have all three. ``--widths encoder`` adds a second run at the real encoders' widths
   (text 384, image 1280, audio 1024: the facet one-hots through a fixed random projection plus
   noise), because the catalog's feature matrices, and the content baseline's item vectors, grow
   with the width: that run says what the evaluation costs with real features.
3. **model**: an untrained ``TwoTower`` (``ModelConfig`` defaults, no item-id embedding, its
   closed-form alignment fitted on the catalog as training does), written with ``write_artifact``.
   Evaluation's memory and time do not depend on the weights' values, so an untrained model costs
   what a trained one does; its metrics are near popularity's or below, and that is expected.
4. **evaluate**: ``raymm evaluate --data --features --model --out --quiet`` in a child process.
   Its peak RSS is the kernel's ``ru_maxrss`` of that child (``os.wait4``), and its RSS is also
   sampled every 0.2 s from /proc for a timeline. For scale, the same child with only
   ``import raymm.cli, raymm.eval.evaluate`` gives the interpreter + torch floor.

Ratio: ``peak_rss_vs_dense`` = peak RSS / (test users x items x 4 bytes); below 1 means the
evaluation held less than the one matrix it avoids (and a dense evaluation would also hold the
process floor, the catalog and the ranking on top of it). Metrics (Recall/NDCG@20 of the model,
popularity and content) are copied from evaluation.json so a reader sees the run was real.

    .venv/bin/python bench/eval_scale.py                          # large preset, ~10 min on 2 cores
    .venv/bin/python bench/eval_scale.py --widths encoder --users 5000 --out bench/results/eval_scale.encoder.json
    .venv/bin/python bench/eval_scale.py --quick                  # 10k items, 5k users, ~1 min

``--items``/``--users``/``--events-per-user`` override the preset's numbers (recorded in the
JSON); ``--quick`` writes ``eval_scale.quick.json`` so a smoke run never replaces the real result.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from _shared import ROOT, finish, log, result_path
from _shared.facets import SHOWN, add_noise, cardinalities, facet_codes, one_hots, vector_column

from raymm.config import RaymmConfig, load_config
from raymm.data.dataset import load_dataset
from raymm.data.synth import resolve_sizes, synthesize
from raymm.features.store import load_features
from raymm.models.artifact import write_artifact
from raymm.models.config import ModelConfig
from raymm.models.towers import TwoTower
from raymm.recommend.catalog import build_catalog
from raymm.recommend.vectors import encode_catalog

BENCH = "eval_scale"
MIB = 1024 * 1024
#: Output widths of the encoders raymm extracts with (MiniLM, EfficientNet-Lite0, mel_stats).
ENCODER_DIMS = {"text": 384, "image": 1280, "audio": 1024}
SAMPLE_S = 0.2
FLOOR_SCRIPT = "import raymm.cli, raymm.eval.evaluate"


def synth_data(data: Path, n_items: int | None, n_users: int | None, events: int | None) -> dict[str, Any]:
    """Synthesize the ``large`` preset (overridden numbers where given) without images or audio."""
    overrides = ["synth.size=large", "synth.missing.image=1.0", "synth.missing.audio=1.0"]
    overrides += [f"synth.{k}={v}" for k, v in (("n_items", n_items), ("n_users", n_users)) if v]
    overrides += [f"synth.events_per_user={events}"] if events else []
    config = load_config(None, overrides)
    items, users, per_user = resolve_sizes(config.synth)
    started = time.perf_counter()
    kept = data / "dataset.json"
    manifest = json.loads(kept.read_text()) if kept.is_file() else {}
    reused = [manifest.get(k) for k in ("n_items", "n_users", "events_per_user")] == [items, users, per_user]
    if not reused:  # a kept --work directory with the same numbers is reused, not synthesized again
        manifest = synthesize(config.synth, str(data), seed=0, progress=False)
    return {
        "preset": "large",
        "overrides": overrides,
        "n_items": items,
        "n_users": users,
        "events_per_user": per_user,
        "missing": manifest["missing"],
        "synth_s": None if reused else round(time.perf_counter() - started, 1),
    }


def write_features(data: Path, path: Path, widths: str, seed: int = 0) -> dict[str, int]:
    """Write a features parquet (item_id + one fixed-size list column per modality); returns the widths.

    ``widths`` "facet": noisy one-hots as in tests/fixtures.py; "encoder": the one-hots through a
    fixed (d, D) Gaussian projection to the encoders' widths, plus noise. Every item has every modality.
    """
    facets = pq.read_table(data / "facets.parquet")
    codes, cardinality = facet_codes(facets), cardinalities(facets)
    rng = np.random.default_rng(seed)
    columns: dict[str, pa.Array] = {"item_id": facets.column("item_id").combine_chunks()}
    for modality, names in SHOWN.items():
        matrix = one_hots(codes, cardinality, modality)
        if widths == "encoder":
            projection = rng.normal(0, 1 / np.sqrt(len(names)), (matrix.shape[1], ENCODER_DIMS[modality]))
            matrix = matrix @ projection.astype(np.float32)
        columns[modality] = vector_column(add_noise(matrix, rng))
    table = pa.table(columns)
    pq.write_table(table, path)
    return {m: table.schema.field(m).type.list_size for m in SHOWN}


def write_model(data: Path, features: Path, model_dir: Path, seed: int = 0) -> dict[str, Any]:
    """An untrained two-tower artifact for these features (alignment fitted as training does)."""
    started = time.perf_counter()
    dataset = load_dataset(str(data), tables=())
    catalog = build_catalog(load_features(str(features)), dataset.items, dataset.interactions("train"))
    torch.manual_seed(seed)
    model = TwoTower(ModelConfig(), catalog.dims)
    if model.requires_fit:
        model.fit_alignment(catalog.features, catalog.present, rows=catalog.warm)
    vectors = encode_catalog(model, catalog).vectors.numpy()
    write_artifact(
        model_dir,
        model,
        catalog.item_ids,
        vectors,
        config=RaymmConfig().model_dump(mode="json", by_alias=True),
        metrics={"fallback_shrinkage": 1.0},
        data_fingerprint="scale",
    )
    return {
        "trained": False,
        "embed_dim": int(vectors.shape[1]),
        "parameters": sum(p.numel() for p in model.parameters()),
        "write_s": round(time.perf_counter() - started, 1),
    }


def _rss_kib(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:  # the child exited between wait4 and the read
        return None
    return None


def run_measured(command: list[str], log_file: Path) -> dict[str, Any]:
    """Run ``command``; its exit code, wall time, peak RSS (``ru_maxrss`` via wait4) and an RSS timeline."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    started = time.perf_counter()
    with log_file.open("w") as output:
        child = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
        timeline: list[tuple[float, int]] = []
        while True:
            pid, status, usage = os.wait4(child.pid, os.WNOHANG)
            if pid:
                break
            rss = _rss_kib(child.pid)
            if rss is not None:
                timeline.append((time.perf_counter() - started, rss))
            time.sleep(SAMPLE_S)
    child.returncode = os.waitstatus_to_exitcode(status)  # reaped by wait4; keep Popen consistent
    wall = time.perf_counter() - started
    step = max(1, len(timeline) // 60)
    return {
        "returncode": child.returncode,
        "wall_s": round(wall, 1),
        "peak_rss_mib": round(usage.ru_maxrss / 1024, 1),  # KiB on Linux
        "user_cpu_s": round(usage.ru_utime, 1),
        "rss_timeline_s_mib": [[round(t, 1), round(kib / 1024)] for t, kib in timeline[::step]],
    }


def evaluate_at_width(work: Path, data: Path, widths: str) -> dict[str, Any]:
    """Features, artifact and one measured ``raymm evaluate`` at ``widths``; the numbers of that run."""
    features = work / f"features_{widths}.parquet"
    model, out = work / f"model_{widths}", work / f"eval_{widths}"
    started = time.perf_counter()
    dims = write_features(data, features, widths)
    log(BENCH, f"[{widths}] features {dims} written in {time.perf_counter() - started:.0f}s")
    artifact = write_model(data, features, model)
    log(BENCH, f"[{widths}] untrained artifact written in {artifact['write_s']:.0f}s; running raymm evaluate")
    command = [sys.executable, "-m", "raymm.cli", "evaluate", "--data", str(data)]
    command += ["--features", str(features), "--model", str(model), "--out", str(out), "--quiet"]
    run = run_measured(command, work / f"evaluate_{widths}.log")
    result: dict[str, Any] = {"feature_dims": dims, "model": artifact, "evaluate": run}
    if run["returncode"] != 0:
        tail = (work / f"evaluate_{widths}.log").read_text()[-4000:]
        result["error"] = tail.replace(str(work), "<work>").replace(str(ROOT), "<repo>")
        log(BENCH, f"[{widths}] raymm evaluate failed (exit {run['returncode']}):\n{result['error']}")
        return result
    evaluation = json.loads((out / "evaluation.json").read_text())
    n_items, test = evaluation["n_items"], evaluation["protocols"]["test"]
    dense_bytes = test["users"] * n_items * 4
    result.update(
        {
            "n_items": n_items,
            "protocols": {
                name: {k: p[k] for k in ("users", "users_without_history", "candidates")}
                for name, p in evaluation["protocols"].items()
            },
            "skipped": evaluation["skipped"],
            "dense_test_matrix_mib": round(dense_bytes / MIB, 1),
            "peak_rss_vs_dense": round(run["peak_rss_mib"] * MIB / dense_bytes, 4),
            "metrics_at_20": {
                protocol: {
                    scorer: {m: round(section[protocol][f"{m}@20"], 4) for m in ("recall", "ndcg")}
                    for scorer, section in (
                        ("model", evaluation["model"]["metrics"]),
                        ("two_tower_alone", evaluation["model"]["two_tower_metrics"]),
                        ("popularity", evaluation["popularity"]["metrics"]),
                        ("content", evaluation["content"]["metrics"]),
                    )
                }
                for protocol in evaluation["protocols"]
            },
        }
    )
    log(
        BENCH,
        f"[{widths}] evaluate: {run['wall_s']:.0f}s, peak RSS {run['peak_rss_mib']:.0f} MiB vs dense "
        f"{dense_bytes / MIB:.0f} MiB ({test['users']:,} test users x {n_items:,} items): "
        f"{result['peak_rss_vs_dense']:.3f}",
    )
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, help="items (default: the large preset's 100,000)")
    parser.add_argument("--users", type=int, help="users (default: the large preset's 50,000)")
    parser.add_argument("--events-per-user", type=int, help="events per user (default: the preset's 60)")
    parser.add_argument("--quick", action="store_true", help="smoke run: 10k items, 5k users")
    parser.add_argument("--widths", default="facet", help="comma list of facet (22/12/13-d), encoder")
    parser.add_argument("--work", type=Path, help="work directory, kept (default: a temporary one, deleted)")
    parser.add_argument("--out", type=Path, help="result JSON (default: bench/results/<bench>[.quick].json)")
    args = parser.parse_args()
    widths = [w for w in args.widths.split(",") if w]
    if any(w not in ("facet", "encoder") for w in widths):
        parser.error(f"--widths takes facet and/or encoder, got {args.widths!r}")
    if args.quick:
        args.items, args.users = args.items or 10_000, args.users or 5_000
    work = args.work or Path(tempfile.mkdtemp(prefix="raymm-eval-scale-", dir="/tmp"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        started = time.perf_counter()
        data = synth_data(work / "data", args.items, args.users, args.events_per_user)
        how = "reused" if data["synth_s"] is None else f"synthesized in {data['synth_s']:.0f}s"
        log(
            BENCH,
            f"{data['n_items']:,} items, {data['n_users']:,} users x {data['events_per_user']} events, "
            f"{how} (no images, no audio)",
        )
        floor = run_measured([sys.executable, "-c", FLOOR_SCRIPT], work / "floor.log")
        log(BENCH, f"import floor of the evaluate process: {floor['peak_rss_mib']:.0f} MiB")
        runs = {w: evaluate_at_width(work, work / "data", w) for w in widths}
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    first = runs[widths[0]]
    report = {
        "question": "does raymm evaluate rank the large benchmark without a dense users x items matrix, "
        "and what is its peak memory?",
        "data": data,
        "features": "noisy facet one-hots (tests/fixtures.py), every modality present; encoder: projected "
        "to the encoders' widths; no encoder ran",
        "model": "untrained TwoTower (ModelConfig defaults, no item-id embedding): memory and time do not "
        "depend on the weights' values",
        "torch_threads": torch.get_num_threads(),
        "import_floor_rss_mib": floor["peak_rss_mib"],
        "peak_rss_vs_dense": first.get("peak_rss_vs_dense"),
        "runs": runs,
        "total_s": round(time.perf_counter() - started, 1),
        "children_max_rss_mib": round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024, 1),
    }
    finish(BENCH, report, args.out or result_path(BENCH, args.quick))
    if any(run["evaluate"]["returncode"] != 0 for run in runs.values()):
        sys.exit(1)


if __name__ == "__main__":
    main()
