"""What the serving benchmarks share: the artifact they serve, the deployment, its logs, its load.

``serve_latency.py``, ``freshness.py`` and ``soak.py`` serve the same kind of artifact (the
two-tower model trained on the ``tiny`` facet dataset, its item tower run over many more items),
deploy it the same way (embedded broker, state shards, Serve's throughput mode) and account CPU
by component the same way; this module is the one copy of all of it.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import shutil
import socket
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from _shared import log
from _shared.facets import SHOWN, add_noise, cardinalities, one_hots, tiny_facet_dataset
from raymm.config import RaymmConfig, load_config

#: The progress lines' label.
LOG = "serving"
#: The share of the tiny catalog's items without an image.
MISSING_IMAGE = 0.3
#: The event log's kinds and their weights, and the Zipf exponent of its item popularity.
KINDS = ("view", "click", "like", "purchase", "play", "skip")
KIND_WEIGHTS = (0.5, 0.2, 0.1, 0.05, 0.1, 0.05)
ZIPF = 0.8
#: The embedded brokers a serving benchmark deploys on by default, the headline first.
BROKERS = "noida,tansu"
#: The deployment: topic partitions, state shards, Recommender replicas (one per core).
PARTITIONS = 4
SHARDS = 2
REPLICAS = 2
DAY_MS = 86_400_000
#: Events a background ``replay`` call sends before the pace is set again.
REPLAY_CHUNK = 10_000


def quiet_logs(log_file: Path) -> None:
    """Ray's, Serve's and kafka-python's INFO go to ``log_file``; the console keeps the stages."""
    import ray.serve  # noqa: F401  its import adds a console handler to "ray.serve": route after it

    from raymm import console

    console.configure_logging(str(log_file), verbose=False)
    for name in ("kafka", "aiohttp"):
        logger = logging.getLogger(name)
        logger.addHandler(logging.NullHandler())
        logger.propagate = False


@functools.cache
def serve_port() -> int:
    """A free port, chosen once per process: Serve's HTTP proxy keeps the port it started with
    for every later deployment in the same Ray instance."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


#: Process title (``/proc/<pid>/cmdline``) prefixes -> component; the first match wins.
COMPONENTS = (
    ("ray::ProxyActor", "serve_proxy"),
    ("ray::ServeController", "serve_controller"),
    ("ray::ServeReplica", "replica"),  # + its deployment's name, below
    ("ray::StateShard", "state_shards"),
    ("ray::", "ray_other_actors"),
)


def _processes() -> dict[int, tuple[int, str, float]]:
    """pid -> (parent pid, title, CPU seconds) of every process we may read."""
    tick = os.sysconf("SC_CLK_TCK")
    found = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
            with open(f"/proc/{entry}/cmdline", "rb") as cmdline:
                title = cmdline.read().replace(b"\0", b" ").decode(errors="replace").strip()
        except OSError:
            continue
        found[int(entry)] = (int(fields[1]), title, (int(fields[11]) + int(fields[12])) / tick)
    return found


#: Processes started from these files (``/proc/<pid>/cmdline``), with every process they start,
#: are one component each: serve_latency.py's load client and its no-Ray anchor (uvicorn's
#: workers are ``multiprocessing`` spawns, whose command lines do not name the file).
OWN_TREES = (("_shared/load_client.py", "load_client"), ("_shared/anchor.py", "anchor"))


def _component(pid: int, title: str, parent: str | None = None) -> str:
    if parent in {name for _, name in OWN_TREES}:
        return parent
    if pid == os.getpid():
        return "driver"
    for script, name in OWN_TREES:
        if script in title:
            return name
    if "noida" in title or "tansu" in title:
        return "broker"
    if title.split(" ", 1)[0].endswith("/haproxy"):  # Serve's HTTP proxy in throughput mode
        return "serve_proxy"
    for prefix, name in COMPONENTS:
        if title.startswith(prefix):
            if name == "replica":  # ray::ServeReplica:<app>:<deployment>[.<method running>]
                return f"replica_{title.split()[0].rsplit(':', 1)[-1].split('.')[0].lower()}"
            return name
    return "ray_core"  # raylet, gcs_server, dashboard and agents


def cpu_by_component() -> dict[str, float]:
    """CPU seconds so far of this process and its descendants (the Ray instance it started, the
    broker, the load client, the anchor), summed by component. Other work on the machine is not
    counted."""
    processes = _processes()
    children: dict[int, list[int]] = {}
    for pid, (parent, _, _) in processes.items():
        children.setdefault(parent, []).append(pid)
    totals: dict[str, float] = {}
    stack: list[tuple[int, str | None]] = [(os.getpid(), None)]
    while stack:
        pid, parent_name = stack.pop()
        if pid not in processes:
            continue
        _, title, cpu = processes[pid]
        name = _component(pid, title, parent_name)
        totals[name] = totals.get(name, 0.0) + cpu
        stack.extend((child, name) for child in children.get(pid, []))
    return totals


def train_config(out: Path, epochs: int) -> RaymmConfig:
    """The model's default widths; the Ray and batch settings of ``small_model_config``."""
    return load_config(
        None,
        [
            f"out={out}",
            "ray.num_cpus=2",
            "train.batch_size=128",
            f"train.epochs={epochs}",
            "train.patience=5",
            "rank.epochs=3",
            "rank.batch_size=256",
        ],
    )


def item_ids(n_items: int, tiny_ids: list[str]) -> list[str]:
    """The tiny catalog's ids, then ``bench-NNNNNN`` up to ``n_items``."""
    return tiny_ids + [f"bench-{k:06d}" for k in range(n_items - len(tiny_ids))]


def event_log(ids: list[str], n_users: int, seed: int, prefix: str = "user") -> pa.Table:
    """A time-ordered interactions table: ``n_users`` users with 10-30 events each over ``ids``."""
    rng = np.random.default_rng(seed)
    per_user = rng.integers(10, 31, size=n_users)
    users = np.repeat(np.arange(n_users), per_user)
    rng.shuffle(users)
    n = users.size
    weights = 1.0 / np.arange(1, len(ids) + 1) ** ZIPF
    items = rng.permutation(len(ids))[rng.choice(len(ids), size=n, p=weights / weights.sum())]
    kinds = rng.choice(len(KINDS), size=n, p=KIND_WEIGHTS)
    now_ms = int(time.time() * 1000)
    ts = np.sort(now_ms - rng.integers(60_000, DAY_MS, size=n))
    id_array = np.asarray(ids, dtype=object)
    return pa.table(
        {
            "user_id": pa.array([f"{prefix}-{u:05d}" for u in users.tolist()]),
            "item_id": pa.array(id_array[items].tolist()),
            "event": pa.array([KINDS[k] for k in kinds.tolist()]),
            "ts": pa.array(ts, pa.timestamp("ms", tz="UTC")),
            "event_id": pa.array([f"{prefix}-e{seed}-{i}" for i in range(n)]),
        }
    )


def positive_counts(events: pa.Table, ids: list[str], positive: list[str]) -> np.ndarray:
    import pyarrow.compute as pc

    kept = events.filter(pc.is_in(events.column("event"), value_set=pa.array(positive)))
    rows = pc.index_in(kept.column("item_id"), value_set=pa.array(ids)).to_numpy(zero_copy_only=False)
    return np.bincount(rows.astype(np.int64), minlength=len(ids))


@dataclass
class Built:
    """The artifacts and what went into them."""

    model: Path
    ranked: Path | None
    ids: list[str]
    events: pa.Table
    info: dict[str, Any]


def _grown_collab(artifact: Any, vectors: torch.Tensor, n_tiny: int) -> Any:
    """The tiny model's item-item vectors for its own items and, for the catalog's other items,
    the ones its content map gives (as serving gives a live item); None when it has none."""
    from raymm.models.blend_parts import CollabVectors
    from raymm.recommend.collab import map_content

    tiny = artifact.collab_vectors()
    if tiny is None:
        return None
    query, items = map_content(vectors[n_tiny:], tiny.content_map)
    return CollabVectors(torch.cat([tiny.query, query]), torch.cat([tiny.items, items]), tiny.content_map)


def _grown_content(
    tiny: Any, config: RaymmConfig, features: dict[str, torch.Tensor], present: dict[str, torch.Tensor]
) -> Any:
    """The content part over every item: fitted on the tiny catalog as training fits it, each
    item's row computed from its features with those statistics (as serving gives a live item).
    Written whatever the tiny model's blend chose, so :func:`serve_latency.with_blend` can weigh it."""
    from raymm.recommend.blend import fit_content
    from raymm.recommend.scorers import FitContext

    scorer = fit_content(config.model_dump(mode="json", by_alias=True), FitContext(tiny, None, []))
    every = scorer.encode(features, present)
    return scorer.with_items(torch.arange(every.shape[0]), every, every.shape[0]).vectors()


def build_artifact(
    work: Path, n_items: int, n_users: int, epochs: int, seed: int, ranker: bool = False
) -> Built:
    """Train on the tiny facet dataset, encode ``n_items`` items with its item tower and write the
    artifact (and a copy with the ranker); see serve_latency.py's docstring, step 1."""
    from raymm.models.artifact import load_artifact, ranker_dir, record_stage, write_artifact
    from raymm.models.ranker import write_item_inputs
    from raymm.recommend.catalog import Catalog
    from raymm.recommend.rerank import ranker_inputs
    from raymm.recommend.vectors import encode_catalog
    from raymm.training.rank_trainer import train_ranker
    from raymm.training.trainer import prepare, train

    saved = work / "built.json"
    if saved.is_file() and (work / "model" / "manifest.json").is_file():
        document = json.loads(saved.read_text())
        if document["key"] == [n_items, n_users, epochs, seed] and (not ranker or document["ranked"]):
            log(LOG, f"reusing the artifact built in {work} before")
            ranked = work / "ranked" if ranker else None
            events = pq.read_table(work / "events.parquet")
            return Built(
                work / "model", ranked, document["ids"], events, {**document["info"], "reused": True}
            )
    shutil.rmtree(work / "tiny", ignore_errors=True)
    started = time.perf_counter()
    data, features_file = tiny_facet_dataset(work / "tiny", seed, MISSING_IMAGE)
    config = train_config(work / "tiny", epochs)
    train(config, str(data), str(features_file), str(work / "tiny" / "model"))
    train_s = time.perf_counter() - started
    log(LOG, f"trained the two-tower model on the tiny facet dataset in {train_s:.0f}s")
    if ranker:
        shutil.copytree(work / "tiny" / "model", work / "tiny" / "ranked")
        train_ranker(
            config, str(data), str(features_file), str(work / "tiny" / "ranked"), run=config.train.run
        )
        log(LOG, f"trained the ranker in {time.perf_counter() - started - train_s:.0f}s")

    encode_started = time.perf_counter()
    artifact = load_artifact(work / "tiny" / "model")
    model = artifact.model
    tiny = prepare(config, str(data), str(features_file)).catalog
    rng = np.random.default_rng(seed + 1)
    extra = n_items - tiny.n_items
    # the extra items' facets drawn uniformly, featurized as the tiny catalog's were
    cardinality = cardinalities(pq.read_table(data / "facets.parquet"))
    codes = {name: rng.integers(0, size, size=extra) for name, size in cardinality.items()}
    features, present = {}, {}
    for modality in SHOWN:
        matrix = add_noise(one_hots(codes, cardinality, modality), rng)
        missing_rate = 1.0 - float(tiny.present[modality].float().mean())
        mask = rng.random(extra) >= missing_rate
        matrix[~mask] = 0.0
        features[modality] = torch.cat([tiny.features[modality], torch.from_numpy(matrix)])
        present[modality] = torch.cat([tiny.present[modality], torch.from_numpy(mask)])
    ids = item_ids(n_items, [str(i) for i in tiny.item_ids])
    catalog = Catalog(
        np.asarray(ids, dtype=object),
        features,
        present,
        torch.cat([tiny.id_index, torch.zeros(extra, dtype=torch.long)]),
        [[] for _ in ids],
        [],
    )
    torch.set_num_threads(2)
    encoding = encode_catalog(model, catalog)
    events = event_log(ids, n_users, seed)
    counts = positive_counts(events, ids, list(model.config.user_state.events))
    manifest = artifact.manifest
    content = _grown_content(tiny, config, features, present)
    write_artifact(
        work / "model",
        model,
        catalog.item_ids,
        encoding.vectors.numpy(),
        config=manifest.config,
        metrics=manifest.metrics,
        data_fingerprint="servebench",
        encoders={m: e.model_dump() for m, e in manifest.encoders.items()},
        popularity=counts,
        aligned=encoding.projected,
        aligned_present=encoding.present,
        collab=_grown_collab(artifact, encoding.vectors, tiny.n_items),
        content=content,
    )
    ranked = None
    if ranker:
        ranked = work / "ranked"
        shutil.copytree(work / "model", ranked)
        source = Path(ranker_dir(work / "tiny" / "ranked"))
        target = Path(ranker_dir(ranked))
        target.mkdir(exist_ok=True)
        for name in ("config.json", "weights.safetensors"):
            shutil.copy2(source / name, target / name)
        write_item_inputs(target, ranker_inputs(model, catalog, counts))
        tiny_manifest = load_artifact(work / "tiny" / "ranked").manifest
        record_stage(ranked, "rank", dict(tiny_manifest.stages["rank"]))
    info: dict[str, Any] = {
        "trained_on": "tiny synthetic benchmark (240 items, 120 users), facet features",
        "epochs": epochs,
        "train_s": round(train_s, 1),
        "encode_and_write_s": round(time.perf_counter() - encode_started, 1),
        "embed_dim": int(encoding.vectors.shape[1]),
        "shared_dim": int(model.config.align.shared_dim),
        "align": model.config.align.method,
        "fusion": model.config.fusion.method,
        "user_pooling": model.config.user_state.pooling,
        "max_history": model.config.user_state.max_history,
        "n_items": n_items,
        # The content part's width: the facet features' full width here (below model.content.dim).
        "content_width": int(content.items.shape[1]),
        "trained_items_with_id_embedding": int((tiny.id_index > 0).sum()),
        "fallback_shrinkage": manifest.metrics.get("fallback_shrinkage"),
        "validation": manifest.metrics.get("validation"),
    }
    if ranked is not None:
        rank_metrics = tiny_manifest.stages["rank"]["metrics"]
        info["ranker"] = {
            key: rank_metrics.get(key)
            for key in ("served_top_n", "validation_ndcg_by_top_n", "retrieval_weight", "best_epoch")
        }
        info["ranker"]["retriever_top_n"] = config.rank.retriever_top_n
    pq.write_table(events, work / "events.parquet")
    saved.write_text(
        json.dumps({"key": [n_items, n_users, epochs, seed], "ranked": ranker, "ids": ids, "info": info})
    )
    log(
        LOG,
        f"{n_items} items through the item tower ({info['embed_dim']}-d) and written in "
        f"{info['encode_and_write_s']:.0f}s",
    )
    return Built(work / "model", ranked, ids, events, info)


def bench_env(throughput: bool = True) -> None:
    """The serving benchmarks' process environment, set before any Ray start (building the model
    starts Ray): offline Hugging Face, and Serve's throughput mode (``raymm.runtime.serve_env``),
    or, with ``throughput`` False, none of its variables (Serve's default proxy, as ``raymm
    serve`` runs by default). Ray's processes and Serve's constants read them when they start, so
    a process measures one mode."""
    from raymm.runtime import serve_env

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    for name, value in serve_env().items():
        if throughput:
            os.environ.setdefault(name, value)
        else:
            os.environ.pop(name, None)


@contextlib.contextmanager
def serving_work(work: Path | None, keep: bool, prefix: str, throughput: bool = True) -> Iterator[Path]:
    """A serving benchmark's start and end: :func:`bench_env` (``throughput``), the work directory (``work``, else a
    temporary one) with Ray's, Serve's and kafka-python's logs in ``logs/raymm.log`` under it; on
    exit Ray is shut down and a temporary directory removed unless ``keep``."""
    bench_env(throughput)
    import ray

    path = work or Path(tempfile.mkdtemp(prefix=prefix))
    path.mkdir(parents=True, exist_ok=True)
    quiet_logs(path / "logs" / "raymm.log")
    try:
        yield path
    finally:
        ray.shutdown()
        if not keep and work is None:
            shutil.rmtree(path, ignore_errors=True)


def serve_config(
    work: Path, broker: str = "noida", overrides: list[str] | None = None, throughput: bool = True
) -> RaymmConfig:
    """Serving under ``work/serve`` (broker data, snapshots) with the embedded ``broker``: emptied
    first, so a reused work directory starts with an empty topic and no state. ``overrides`` are
    ``--set`` strings (``serve.recommender_replicas=2``); ``throughput``: Serve's throughput mode
    (the process's environment must agree: :func:`bench_env`)."""
    shutil.rmtree(work / "serve", ignore_errors=True)
    # One recommender replica per core: a replica answers HTTP, batches and calls the shards on
    # one Python thread, which saturated near 100 requests/s here (p50 > 1 s in one of three runs).
    base = [
        f"out={work / 'serve'}",
        "ray.num_cpus=2",
        f"ray.serve_throughput_mode={str(throughput).lower()}",  # HAProxy, direct ingress (serve_env)
        f"serve.state_shards={SHARDS}",
    ]
    config = load_config(None, [*base, f"serve.recommender_replicas={REPLICAS}", *(overrides or [])])
    config.serve.port = serve_port()
    config.kafka = config.kafka.model_copy(update={"partitions": PARTITIONS, "embedded_broker": broker})
    return config


def serve_settings(config: RaymmConfig) -> dict[str, Any]:
    s = config.serve
    return {
        "partitions": config.kafka.partitions,
        "state_shards": s.state_shards,
        "recommender_replicas": s.recommender_replicas,
        "recommender_num_cpus": s.recommender_num_cpus,
        "index": s.index,
        "faiss_min_items": s.faiss_min_items,
        "nprobe": s.nprobe,
        "serve_env": {k: v for k, v in sorted(os.environ.items()) if k.startswith("RAY_SERVE_")},
        "shard_num_cpus": s.shard_num_cpus,
        "broker": config.kafka.embedded_broker,
        "ray_num_cpus": config.ray.num_cpus,
        "batch": {"max_batch_size": s.max_batch_size, "batch_wait_ms": s.batch_wait_ms},
    }


def shard_totals(client: Any) -> tuple[int, int | None, list[dict[str, Any]]]:
    """(events applied, total lag or None, the shards' reports) from ``/healthz``."""
    _, body = client.request("GET", "/healthz")
    shards = body.get("shards", []) if isinstance(body, dict) else []
    applied = sum(int(s.get("applied", 0)) for s in shards)
    lags = [s.get("lag") for s in shards]
    lag = None if any(v is None for v in lags) else sum(lags)
    return applied, lag, shards


def wait_applied(client: Any, expected: int, timeout_s: float = 300.0) -> float:
    """Seconds until the shards have applied ``expected`` events (TimeoutError otherwise)."""
    started = time.perf_counter()
    while time.perf_counter() - started < timeout_s:
        applied, lag, _ = shard_totals(client)
        if applied >= expected and lag == 0:
            return time.perf_counter() - started
        time.sleep(0.25)
    raise TimeoutError(f"shards applied {applied} of {expected} events in {timeout_s:.0f}s")


@contextlib.contextmanager
def deployed(config: RaymmConfig, model: Path) -> Iterator[Any]:
    from raymm.serve.runner import running_app

    with running_app(config, str(model)) as app:
        yield app


def replay_state(app: Any, events: pa.Table, config: RaymmConfig) -> dict[str, Any]:
    """Replay ``events`` as fast as the producer goes and wait until every one is applied."""
    from raymm.stream.producer import replay

    client = app.client()
    before, _, _ = shard_totals(client)
    result = replay(events, app.bootstrap_servers, kafka=config.kafka)
    wait_s = wait_applied(client, before + result.sent)
    return {"events": result.sent, "replay_rate": round(result.rate, 1), "applied_after_s": round(wait_s, 2)}


def folded_states(events: pa.Table, positive: list[str]) -> dict[str, dict[str, Any]]:
    """Each user's state as the shards would hold it after the log (no Serve): every item seen,
    the positive ones in time order as the history (the recommender keeps the window)."""
    ordered = events.sort_by([("user_id", "ascending"), ("ts", "ascending")])
    states: dict[str, dict[str, Any]] = {}
    for user, item, event in zip(
        ordered.column("user_id").to_pylist(),
        ordered.column("item_id").to_pylist(),
        ordered.column("event").to_pylist(),
        strict=True,
    ):
        state = states.setdefault(user, {"history": [], "seen": []})
        state["seen"].append(item)
        if event in positive:
            state["history"].append(item)
    return states
