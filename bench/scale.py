"""Scale: how do the pipeline's wall time and peak memory grow from the ``small`` to the ``large`` benchmark?

Each stage runs as its own child process through the CLI, as a user would run it
(``python -m raymm.cli ... --config configs/quickstart.yaml --set ...``), in the quickstart's order:

1. **synth**: ``raymm data synth`` (items with text, PNG images and WAV audio; interactions, splits).
2. **extract**: ``raymm extract`` (Ray Data, one encoder actor pool per modality).
3. **train**: ``raymm train`` (the two towers on Ray Train; validation every epoch).
4. **rank**: ``raymm train --stage rank`` (the ranker on Ray Train, its retrieval weight, Platt scaling).
5. **evaluate**: ``raymm evaluate --out`` (full-catalog ranking of the test and cold-start users
   for the served model, the two-tower alone, popularity and the content baseline, then the
   ranker's pointwise and retrieve-then-rank evaluation, since the artifact holds one).

Per stage and size: wall time, and memory of the whole process tree (the CLI's driver plus every
descendant: the local Ray that the driver starts, its raylet, GCS and workers), sampled every
``SAMPLE_S`` from /proc. ``peak_rss_sum_mib`` is the peak over samples of the summed RSS (it
counts shared pages, e.g. torch's libraries and Ray's /dev/shm object store, once per process
that maps them); ``peak_pss_sum_mib`` is the same with PSS, which shares them out and is the
closer figure for what the tree holds, and ``peak_pss_by_role_mib`` splits that peak by process
role (the driver, ``ray::RayTrainWorker``, ``raylet``, ...); ``peak_rss_max_mib`` the largest
single process and its command (``peak_rss_max_process``). A tree gone between two samples is missed, so peaks are
lower bounds to within a sample's length (``PSS_EVERY_S`` for PSS, which is costlier to read).

Growth from the smallest to the largest size, per stage: ``ratio`` = large / small and the
log-log slope ``log(ratio) / log(items ratio)``. Users grow with items in both presets (small:
3,000 items, 1,500 users; large: 100,000 and 50,000; 60 events per user), so a stage linear in
events has slope 1, and one that scores every user against every item (full-catalog evaluation,
the synthetic data's sampling of each user's events over the whole catalog) has slope 2 by
construction; ``notes`` says which stage is which.

The settings (``SETTINGS``, recorded in the JSON) are the ones a user would pick to run the large
catalog on a 2-core machine in about an hour and a half (it takes ~91 min: extraction ~21 min and
the training stage, one epoch plus the served blend's fit and search, ~39 min at large, see
``NOTES``), and the same at every size, so the ratios measure the catalog, not the settings: one
two-tower epoch and one ranker epoch at batch 1024 (the quickstart's 3 and 3 epochs at 256 and 512
would take hours at 100,000 items here), and the image encoder at the synthetic images' own 64 px
instead of upscaling them to 128 (about 6x faster here; at 128 px the image encoder alone would
take most of an hour at 100,000 items), and two text actors instead of one (the text encoder is the
slowest, and one single-threaded actor cannot use the second core).
These change the features and the models against the quickstart's, so the metrics in the JSON
are this run's, not the quickstart's.

    .venv/bin/python bench/scale.py                            # small and large, ~95 min on 2 cores
    .venv/bin/python bench/scale.py --sizes small              # ~6 min on an idle machine
    .venv/bin/python bench/scale.py --work /tmp/scale --reuse  # resume: finished stages kept, with their numbers
    .venv/bin/python bench/scale.py --work /tmp/scale --reuse --report  # run nothing; scale.partial.json if stages are missing
    .venv/bin/python bench/scale.py --quick                    # tiny only, ~2 min: scale.quick.json

Writes ``bench/results/scale.json`` and the log-log chart ``bench/results/scale.png`` (time and
peak memory against items, one line per stage); ``--quick`` writes ``scale.quick.json`` and
``scale.quick.png``, so a smoke run never replaces the real result.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from _shared import BASE_CONFIG, RESULTS, ROOT, finish, log
from _shared import SCALE_SETTINGS as SETTINGS

from raymm.config import load_config
from raymm.data.synth import resolve_sizes

BENCH = "scale"
MIB = 1024 * 1024
SAMPLE_S = 0.2
#: PSS (smaps_rollup) is read at most this often: the kernel walks a process's page tables to
#: sum it, which at 0.2 s cost this benchmark ~0.5 of a core of system time on the large run's
#: 14 GiB training worker, slowing the very stages it measured. RSS (statm) stays at SAMPLE_S.
PSS_EVERY_S = 5.0
PAGE = os.sysconf("SC_PAGE_SIZE")
TICKS = os.sysconf("SC_CLK_TCK")
STAGES = ("synth", "extract", "train", "rank", "evaluate")


@dataclass(frozen=True)
class Size:
    """One catalog size: the preset and its numbers (items, users, events per user)."""

    name: str
    items: int
    users: int
    events_per_user: int

    @classmethod
    def of(cls, name: str) -> Size:
        config = load_config(None, [f"synth.size={name}"])
        return cls(name, *resolve_sizes(config.synth))


def stage_command(stage: str, size: Size, out: Path) -> list[str]:
    """The CLI call of ``stage`` for ``size``, with everything under ``out`` (its ``--set out``)."""
    cli = [sys.executable, "-m", "raymm.cli"]
    common = ["--config", str(BASE_CONFIG), "--quiet", "--set", f"out={out}"]
    common += [arg for setting in SETTINGS for arg in ("--set", setting)]
    return {
        "synth": [*cli, "data", "synth", "--size", size.name, *common],
        "extract": [*cli, "extract", *common],
        "train": [*cli, "train", *common],
        "rank": [*cli, "train", "--stage", "rank", *common],
        "evaluate": [*cli, "evaluate", *common, "--out", str(out / "evaluation")],
    }[stage]


def stage_done(stage: str, out: Path) -> bool:
    """Whether ``stage``'s output under ``out`` is complete (what ``--reuse`` keeps): the file
    each command writes last."""
    if stage == "rank":  # the ranker's last act is to record its stage in the artifact's manifest
        manifest = out / "model" / "manifest.json"
        return manifest.is_file() and "rank" in json.loads(manifest.read_text()).get("stages", {})
    return {
        "synth": out / "data" / "dataset.json",
        "extract": out / "features" / "features.json",
        "train": out / "model" / "manifest.json",
        "evaluate": out / "evaluation" / "evaluation.json",
    }[stage].exists()


# --- the process tree's memory, from /proc ------------------------------------------------------


def _processes() -> dict[int, tuple[int, int]]:
    """Every process now: pid -> (parent pid, user + system CPU in clock ticks)."""
    processes = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry.name}/stat").read_text()
        except OSError:  # exited while we looked
            continue
        # The command name (field 2) may hold spaces and parentheses: the fields after the last ')'
        # are state, ppid, ... utime (14th field overall) and stime (15th).
        fields = stat[stat.rindex(")") + 2 :].split()
        processes[int(entry.name)] = (int(fields[1]), int(fields[11]) + int(fields[12]))
    return processes


def process_tree(root: int, processes: dict[int, tuple[int, int]]) -> list[int]:
    """``root`` and all its descendants among ``processes``."""
    children: dict[int, list[int]] = {}
    for pid, (parent, _) in processes.items():
        children.setdefault(parent, []).append(pid)
    tree, stack = [], [root]
    while stack:
        pid = stack.pop()
        tree.append(pid)
        stack.extend(children.get(pid, ()))
    return tree


def _rss_pss(pid: int, with_pss: bool) -> tuple[int, int | None] | None:
    """(RSS, PSS) of ``pid`` in bytes, PSS None unless ``with_pss``; None when it has exited."""
    try:
        rss = int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * PAGE
        if not with_pss:
            return rss, None
        pss = rss
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                pss = int(line.split()[1]) * 1024
                break
    except (OSError, ValueError, IndexError):
        return None
    return rss, pss


def _role(pid: int, driver: int) -> str:
    """What a process is, without machine paths: ``driver``, Ray's process title (``ray::RayTrainWorker``)
    or the executable's name (``raylet``, ``gcs_server``, ``python``)."""
    if pid == driver:
        return "driver"
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return "?"
    first = argv[0].decode(errors="replace")
    if first.startswith("ray::"):
        return first.split()[0]
    name = Path(first.split()[0]).name if first else "?"
    if name.startswith("python") and len(argv) > 1:  # a Python helper: name its script, e.g. agent.py
        script = next((a.decode(errors="replace") for a in argv[1:] if a.endswith(b".py")), "")
        return f"{name} {Path(script).name}".strip()
    return name


def run_measured(command: list[str], log_file: Path) -> dict[str, Any]:
    """Run ``command``; its exit code, wall time, CPU time and the peak memory of its process tree."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    started = time.perf_counter()
    peak_rss_sum = peak_pss_sum = peak_rss_max = peak_processes = samples = 0
    peak_rss_max_process = ""
    cpu_ticks: dict[int, int] = {}  # last CPU time seen of each process of the tree
    timeline: list[tuple[float, int, int]] = []
    last_pss_at, pss_sum = -PSS_EVERY_S, 0
    pss_by_role: dict[str, int] = {}  # of the sample with the peak tree PSS
    with log_file.open("w") as output:
        child = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
        while True:
            pid, status, usage = os.wait4(child.pid, os.WNOHANG)
            if pid:
                break
            processes = _processes()
            now = time.perf_counter() - started
            with_pss = now - last_pss_at >= PSS_EVERY_S
            rss_sum = count = new_pss_sum = 0
            roles: dict[str, int] = {}
            for member in process_tree(child.pid, processes):
                memory = _rss_pss(member, with_pss)
                if memory is None or member not in processes:
                    continue
                cpu_ticks[member] = processes[member][1]
                rss, pss = memory
                rss_sum, new_pss_sum, count = rss_sum + rss, new_pss_sum + (pss or 0), count + 1
                if pss is not None:
                    role = _role(member, child.pid)
                    roles[role] = roles.get(role, 0) + pss
                if rss > peak_rss_max:
                    peak_rss_max, peak_rss_max_process = rss, _role(member, child.pid)
            samples += 1
            if with_pss:
                last_pss_at, pss_sum = now, new_pss_sum
                if pss_sum > peak_pss_sum:
                    pss_by_role = roles
            peak_rss_sum, peak_pss_sum = max(peak_rss_sum, rss_sum), max(peak_pss_sum, pss_sum)
            peak_processes = max(peak_processes, count)
            timeline.append((now, rss_sum, pss_sum))
            time.sleep(SAMPLE_S)
    child.returncode = os.waitstatus_to_exitcode(status)  # reaped by wait4; keep Popen consistent
    step = max(1, len(timeline) // 60)
    return {
        "returncode": child.returncode,
        "wall_s": round(time.perf_counter() - started, 1),
        # every process of the tree, as last sampled (a process's last 0.2 s may be missed)
        "tree_cpu_s": round(sum(cpu_ticks.values()) / TICKS, 1),
        "driver_cpu_s": round(usage.ru_utime + usage.ru_stime, 1),
        "peak_rss_sum_mib": round(peak_rss_sum / MIB, 1),
        "peak_pss_sum_mib": round(peak_pss_sum / MIB, 1),
        # the peak's PSS by process role (summed over the processes of a role), largest first
        "peak_pss_by_role_mib": {
            role: round(pss / MIB, 1) for role, pss in sorted(pss_by_role.items(), key=lambda kv: -kv[1])
        },
        "peak_rss_max_mib": round(peak_rss_max / MIB, 1),
        "peak_rss_max_process": peak_rss_max_process,
        "peak_processes": peak_processes,
        "samples": samples,
        "pss_every_s": PSS_EVERY_S,
        "timeline_s_rss_pss_mib": [
            [round(t, 1), round(r / MIB), round(p / MIB)] for t, r, p in timeline[::step]
        ],
    }


# --- the run --------------------------------------------------------------------------------------


def _scrub(text: str, work: Path) -> str:
    return text.replace(str(work), "<work>").replace(str(ROOT), "<repo>").replace(sys.executable, "<python>")


#: Where each training stage's Ray Train runs go under ``<out>/train``, by name prefix.
RUN_PREFIXES = {"train": "train-", "rank": "rank-"}


def clear_runs(stage: str, out: Path) -> list[str]:
    """Remove the Ray Train runs an earlier ``stage`` left under ``out/train`` and return their
    names: ``raymm train`` resumes a run it finds there under the same run key, so a stage run
    again over them would measure a resumed (or finished) run, not the stage (the rank stage's
    re-run of the morning of 2026-12-07 measured 252 s without the ranker's training for 555 s
    with it)."""
    runs = out / "train"
    prefix = RUN_PREFIXES.get(stage)
    if prefix is None or not runs.is_dir():
        return []
    removed = sorted(path.name for path in runs.glob(f"{prefix}*") if path.is_dir())
    for name in removed:
        shutil.rmtree(runs / name)
    return removed


def run_size(size: Size, work: Path, reuse: bool, run_missing: bool = True) -> dict[str, Any]:
    """Every stage at ``size`` under ``work/<size>``; stops at the first stage that fails.

    Without ``run_missing`` (``--report``) nothing runs: stages not done are ``{"not_run": true}``.
    """
    out = work / size.name
    out.mkdir(parents=True, exist_ok=True)
    stages: dict[str, Any] = {}
    for stage in STAGES:
        measured = out / f"{stage}.measured.json"
        if reuse and stage_done(stage, out):
            # An earlier run's numbers for this stage, when it recorded them (not a stage made by hand).
            stages[stage] = {
                **(json.loads(measured.read_text()) if measured.is_file() else {}),
                "reused": True,
            }
            log(BENCH, f"[{size.name}] {stage}: kept from an earlier run (--reuse)")
            continue
        if not run_missing:
            stages[stage] = {"not_run": True}
            log(BENCH, f"[{size.name}] {stage}: not run yet (--report)")
            continue
        log(BENCH, f"[{size.name}] {stage} ...")
        removed = clear_runs(stage, out)
        if removed:
            log(
                BENCH, f"[{size.name}] {stage}: removed earlier runs {', '.join(removed)}, so none is resumed"
            )
        log_file = out / f"{stage}.log"
        run = run_measured(stage_command(stage, size, out), log_file)
        stages[stage] = run
        if run["returncode"] == 0:
            measured.write_text(json.dumps(run))
        log(
            BENCH,
            f"[{size.name}] {stage}: {run['wall_s']:.0f}s, tree peak RSS {run['peak_rss_sum_mib']:.0f} MiB "
            f"(PSS {run['peak_pss_sum_mib']:.0f}, largest process {run['peak_rss_max_mib']:.0f}, "
            f"{run['peak_processes']} processes)",
        )
        if run["returncode"] != 0:
            run["error"] = _scrub(log_file.read_text()[-4000:], work)
            log(BENCH, f"[{size.name}] {stage} failed (exit {run['returncode']}):\n{run['error']}")
            break
    result: dict[str, Any] = {
        "items": size.items,
        "users": size.users,
        "events_per_user": size.events_per_user,
    }
    result["stages"] = stages
    if all(run.get("returncode") == 0 for run in stages.values()):
        result["pipeline_s"] = round(sum(run["wall_s"] for run in stages.values()), 1)
    evaluation = out / "evaluation" / "evaluation.json"
    if evaluation.is_file():
        document = json.loads(evaluation.read_text())
        result["test_users"] = document["protocols"]["test"]["users"]
        result["metrics_at_20"] = {
            name: {m: round(section["test"][f"{m}@20"], 4) for m in ("recall", "ndcg")}
            for name, section in (
                ("model", document["model"]["metrics"]),
                ("popularity", document["popularity"]["metrics"]),
            )
        }
    dataset = out / "data" / "dataset.json"
    if dataset.is_file():
        result["counts"] = json.loads(dataset.read_text()).get("counts")
    result.update(training_facts(out / "model" / "manifest.json"))
    if (out / "data" / "train.parquet").is_file():
        result["train_items_per_step"] = items_per_step(out / "data")
    return result


def items_per_step(data: Path, steps: int = 50, seed: int = 0) -> dict[str, Any]:
    """What one two-tower step encodes at this size: over ``steps`` seeded batches of the training
    examples (the core's history window, ``train.batch_size`` from ``SETTINGS``), the rows a step
    gathers (valid history entries + targets) and the unique items among them, which the item tower
    encodes once each (``NextItemObjective.forward``)."""
    import numpy as np
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from raymm.training.examples import examples_by_position

    config = load_config(BASE_CONFIG, list(SETTINGS))
    batch, window = config.train.batch_size, config.model.user_state.max_history
    items = pq.read_table(data / "items.parquet", columns=["item_id"]).column("item_id").combine_chunks()

    def positions(item_ids: Any) -> np.ndarray:
        return np.asarray(pc.index_in(item_ids, value_set=items).fill_null(-1), dtype=np.int64)

    examples = examples_by_position(
        pq.read_table(data / "train.parquet"), positions, config.model.user_state.events, window
    )
    history, targets = examples.history, examples.target
    rng = np.random.default_rng(seed)
    gathered, unique = [], []
    for _ in range(steps):
        pick = rng.choice(len(targets), min(batch, len(targets)), replace=False)
        step = np.concatenate([history[pick][history[pick] >= 0], targets[pick]])
        gathered.append(len(step))
        unique.append(len(np.unique(step)))
    return {
        "examples": len(targets),
        "batch_size": batch,
        "max_history": window,
        "rows_per_step": round(float(np.mean(gathered))),
        "unique_items_per_step": round(float(np.mean(unique))),
    }


def training_facts(manifest_file: Path) -> dict[str, Any]:
    """Steps' throughput and example counts the two runs recorded in the artifact's manifest."""
    if not manifest_file.is_file():
        return {}
    manifest = json.loads(manifest_file.read_text())
    facts: dict[str, Any] = {
        "train_samples_per_s": [round(row["samples_per_s"]) for row in manifest["metrics"].get("history", [])]
    }
    rank = manifest.get("stages", {}).get("rank")
    if rank is not None:
        facts["rank_samples_per_s"] = [round(row["samples_per_s"]) for row in rank.get("history", [])]
        facts["rank_examples"] = rank["metrics"].get("n_examples")
    return facts


GROWN = ("wall_s", "tree_cpu_s", "peak_rss_sum_mib", "peak_pss_sum_mib", "peak_rss_max_mib")


def growth(small: dict[str, Any], large: dict[str, Any]) -> dict[str, Any]:
    """Per stage and measure: large / small and the log-log slope against the items ratio."""
    items_ratio = large["items"] / small["items"]
    table: dict[str, Any] = {
        "items_ratio": round(items_ratio, 2),
        "users_ratio": large["users"] / small["users"],
    }
    for stage in STAGES:
        a, b = small["stages"].get(stage, {}), large["stages"].get(stage, {})
        if a.get("returncode") != 0 or b.get("returncode") != 0:
            continue  # failed, not run, or reused without its numbers: nothing to compare
        table[stage] = {
            measure: {
                "ratio": round(b[measure] / a[measure], 2),
                "slope": round(math.log(b[measure] / a[measure]) / math.log(items_ratio), 2),
            }
            for measure in GROWN
            if a.get(measure, 0) > 0 and b.get(measure, 0) > 0
        }
    return table


def plot(sizes: dict[str, Any], out: Path) -> None:
    """Wall time and peak tree PSS against items, log-log, one line per stage."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for stage in STAGES:
        points = [
            (entry["items"], entry["stages"][stage])
            for entry in sizes.values()
            if entry["stages"].get(stage, {}).get("returncode") == 0
        ]
        if not points:
            continue
        items = [n for n, _ in points]
        axes[0].plot(items, [run["wall_s"] for _, run in points], marker="o", label=stage)
        axes[1].plot(items, [run["peak_pss_sum_mib"] for _, run in points], marker="o", label=stage)
    for axis, title in zip(axes, ("wall time (s)", "peak memory, process tree PSS (MiB)"), strict=True):
        if axis is axes[0] and axis.lines:  # guides through the lowest first point: linear, users x items
            x0 = min(line.get_xdata()[0] for line in axis.lines)
            y0 = min(line.get_ydata()[0] for line in axis.lines)
            x1 = max(max(line.get_xdata()) for line in axis.lines)
            for slope, style in ((1, ":"), (2, "--")):
                axis.plot([x0, x1], [y0, y0 * (x1 / x0) ** slope], style, color="grey", lw=0.8)
                axis.annotate(f"slope {slope}", (x1, y0 * (x1 / x0) ** slope), fontsize=7, color="grey")
        axis.set_xscale("log")
        axis.set_yscale("log")
        axis.set_xlabel("items")
        axis.set_title(title)
        axis.grid(True, which="both", alpha=0.3)
    if axes[0].lines:
        axes[0].legend()
    figure.suptitle(f"raymm pipeline, one CLI process per stage ({os.cpu_count()} CPUs)")
    figure.tight_layout()
    figure.savefig(out, dpi=90)
    plt.close(figure)


NOTES = {
    "monitor": "every stage read PSS every 5 s (pss_every_s) and RSS every 0.2 s, so a PSS peak is a lower "
    "bound to within a sample (RSS is the closer peak). This file comes from one work directory run with "
    "--reuse: synth and extract (code the served blend's content part does not touch) are kept from the "
    "full run of 2026-12-07 06:45-07:16 UTC; train, rank and evaluate were re-run at both sizes on "
    "2026-12-07 15:55-16:51 UTC, with the content part in the served blend",
    "synth": "sampling draws each user's events by Gumbel-top-k over the whole catalog (users x items "
    "scores, in blocks): slope ~2 in its event sampling by construction of the benchmark (it is the "
    "generator, not the recommender); rendering text, PNG and WAV per item is linear, in synth.workers "
    "processes",
    "extract": "one encoder pass per item and modality: linear in items; 1,253 s at large (2,155 s in the "
    "2026-12-02 run, before the block-row default and the read task's block split)",
    "train": "examples are linear in events (41,483 at small, 1,401,477 at large: x33.8), and so is the "
    "time (slope ~1). 2,328 s at large against 1,872 s in the morning's run without the content part: "
    "the driver's CPU went 486 -> 1,132 s, the fit of the content part (a covariance pass over "
    "100,000 x 2,688 raw features and a 2,688^2 eigh) and the blend search, whose content coordinate "
    "took it from 65 to 140 validation trials (each ranks 4,096 users against the whole catalog); the "
    "worker's steps are unchanged. Peak tree PSS at large 13.5 GiB (16.5 in the morning; RSS peak "
    "17.0 GiB against 20.8): the worker 6.7 GiB, the driver 3.3 GiB and Ray Data's read and shuffle "
    "workers (ray::IDLE) 1.8 GiB at the peak. Each step encodes the batch's unique history and target "
    "items through the item tower once (torch.unique); train_items_per_step counts them",
    "rank": "examples are linear in events (230,142 at small, 7,752,486 at large: x33.7) but the time is "
    "not: small's run is mostly fixed costs (Ray, the workers, the retrieval weight's and the served "
    "top-N's validation passes), and the ranker's steps are cheap. 593 s at large: the ranker trains "
    "~305 s in the worker, the driver's retrieval-weight and top-N passes and calibration take ~200 s "
    "after it. Peak tree PSS at large 9,586 MiB (RSS 11,717), the training worker ~5.9 GiB of PSS "
    "while it trains. The committed figure before this run, 252 s and 7,889 MiB, measured no training: "
    "that re-run found the earlier run's finished Ray Train run under the same run key and resumed it "
    "(its worker lived 25 s), so scale.py now removes a stage's earlier runs before running it "
    "(clear_runs). The full run of that morning, before the driver and the worker dropped the catalog's "
    "raw features, took 555 s and peaked at 9,735 MiB; the memory fixes that stand are the examples' "
    "(each example's history held once per user state, bench/results/rank_memory.json) and that drop "
    "(100,000 x 2,688 float32, ~1 GiB in each process)",
    "evaluate": "full-catalog ranking of every test and cold-start user (47,338 test users at large) for "
    "the served model, the two-tower alone, popularity, content (dot products at the encoders' 2,688 "
    "dimensions, the costliest) and retrieve-then-rank: users x items work, slope 2 asymptotically when "
    "users grow with items, by design of a full-ranking evaluation; measured slope ~1.1, since small's "
    "run is mostly loading and start-up. 895 s at large (781 s in the morning; the served model now "
    "carries the content part). Its PSS is ~3.5 GiB most of the run with short spikes to 11.7 GiB at "
    "large: the spikes are not broken down here; bench/eval_scale.py measures the ranking itself",
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="small,large", help="comma list of presets, smallest first")
    parser.add_argument("--work", type=Path, help="work directory, kept (default: a temporary one, deleted)")
    parser.add_argument("--reuse", action="store_true", help="keep stages whose output exists in --work")
    parser.add_argument("--quick", action="store_true", help="smoke run: the tiny preset alone")
    parser.add_argument(
        "--report",
        action="store_true",
        help="run nothing: report the stages --work holds (with --reuse); scale.partial.json if some are missing",
    )
    parser.add_argument("--out", type=Path, help="result JSON (default: bench/results/scale[.quick].json)")
    args = parser.parse_args()
    names = ["tiny"] if args.quick else [s for s in args.sizes.split(",") if s]
    if args.reuse and args.work is None:
        parser.error("--reuse needs --work (a temporary work directory holds nothing to reuse)")
    if args.report and not args.reuse:
        parser.error("--report needs --reuse --work DIR (it reports what an earlier run left there)")
    sizes = [Size.of(name) for name in names]
    if [s.items for s in sizes] != sorted(s.items for s in sizes):
        parser.error(f"--sizes must go from the smallest catalog to the largest, got {args.sizes!r}")
    work = args.work or Path(tempfile.mkdtemp(prefix="raymm-scale-", dir="/tmp"))
    work.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    try:
        results = {size.name: run_size(size, work, args.reuse, not args.report) for size in sizes}
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    report: dict[str, Any] = {
        "question": "how do each stage's wall time and peak memory (driver + Ray processes) grow from the "
        "small to the large synthetic benchmark, and does the large run fit about an hour here?",
        "config": "configs/quickstart.yaml",
        "settings": list(SETTINGS),
        "sample_s": SAMPLE_S,
        "sizes": results,
        # This invocation's time (stages kept by --reuse cost nothing here; ``pipeline_s`` per size
        # sums every stage's measured time); none for --report, which runs nothing.
        "total_s": None if args.report else round(time.perf_counter() - started, 1),
        "not_run": [
            f"{n}/{stage}"
            for n, r in results.items()
            for stage, run in r["stages"].items()
            if run.get("not_run")
        ],
        "notes": NOTES,
    }
    if len(sizes) > 1:
        report["growth"] = growth(results[sizes[0].name], results[sizes[-1].name])
    name = f"{BENCH}.quick" if args.quick else BENCH
    out = args.out or RESULTS / (f"{name}.partial.json" if report["not_run"] else f"{name}.json")
    plot(results, out.with_suffix(".png"))
    finish(BENCH, report, out)
    failed = [
        f"{name}/{stage}"
        for name, result in results.items()
        for stage, run in result["stages"].items()
        if run.get("returncode", 0) != 0
    ]
    if failed:
        log(BENCH, f"failed: {', '.join(failed)}")
        sys.exit(1)


if __name__ == "__main__":
    main()
