"""Rank stage memory: where does ``raymm train --stage rank`` hold its examples, by array and by process?

bench/scale.py measured the rank stage at `large` (3M events) peaking at 15.8 GiB of process-tree
PSS. A `large` pipeline takes ~1.5 h here before the rank stage, so this measures the stage on a
log that runs in minutes, and the same code: the `small` benchmark's data and a two-tower
artifact trained on it (``--source``: ``data/``, ``features/``, ``model/``, as
``bench/scale.py --sizes small --work DIR`` leaves them under ``DIR/small``), with every user of
the train, validation and test splits repeated ``--repeat`` times under new ids (same catalog,
same histories; events, and so examples, times ``--repeat``). Two measures:

1. **examples**: in this process, the driver's building of the training and validation examples
   (:func:`raymm.recommend.rank_examples.split_examples`) under ``tracemalloc``, which sees
   NumPy's allocations: the peak while building and the bytes the examples hold (by array).
2. **stage**: the CLI's rank stage (``bench/scale.py``'s command, settings and process-tree
   sampler) on a fresh copy of the artifact: wall time, peak tree PSS and the PSS of each process
   role at that peak (the driver, ``ray::RayTrainWorker``, ``raylet``: Ray's object store is
   shared memory, counted in the PSS of the processes that map it).

``--baseline FILE`` keeps an earlier run of this script (at another commit, same ``--repeat``)
under ``baseline``, with the ratios of the peaks.

    .venv/bin/python bench/rank_memory.py --source out/scale/small --repeat 5   # ~6 min on 2 cores

Writes ``bench/results/rank_memory.json``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import tempfile
import tracemalloc
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from _shared import BASE_CONFIG, RESULTS, ROOT, finish, log
from _shared import SCALE_SETTINGS as SETTINGS
from scale import MIB, Size, run_measured, stage_command

from raymm.config import load_config

BENCH = "rank_memory"
SPLITS = ("train", "validation", "test")


def repeated_data(source: Path, target: Path, repeat: int) -> dict[str, int]:
    """``source``'s dataset in ``target`` with each split's users ``repeat`` times (copy ``k`` of a
    user is ``<user_id>~k``); the events of each split."""
    shutil.copytree(source, target)
    events = {}
    for split in SPLITS:
        table = pq.read_table(source / f"{split}.parquet")
        users, at = table.column("user_id"), table.schema.get_field_index("user_id")
        copies = [table] + [
            table.set_column(at, table.field(at), pc.binary_join_element_wise(users, f"{k}", "~"))
            for k in range(1, repeat)
        ]
        repeated = pa.concat_tables(copies)
        pq.write_table(repeated, target / f"{split}.parquet")
        events[split] = repeated.num_rows
    return events


def examples_memory(out: Path) -> dict[str, Any]:
    """Peak NumPy memory of building the training and validation examples, and what they hold."""
    from raymm.recommend.rank_examples import rank_setup, split_examples

    config = load_config(BASE_CONFIG, [f"out={out}", *SETTINGS])
    data = str(out / "data")
    setup = rank_setup(data, str(out / "features"), str(out / "model"))
    tracemalloc.start()
    built = {
        split: split_examples(setup, config.rank, data, split, config.seed + k)
        for k, split in enumerate(("train", "validation"))
    }
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    held = {
        split: {name: round(array.nbytes / MIB, 1) for name, array in vars(examples).items()}
        for split, examples in built.items()
    }
    return {
        "examples": {split: len(examples) for split, examples in built.items()},
        "max_history": setup.two_tower.config.user_state.max_history,
        "build_peak_mib": round(peak / MIB, 1),
        "held_mib": round(sum(sum(arrays.values()) for arrays in held.values()), 1),
        "held_by_array_mib": held,
    }


def stage_memory(out: Path, model: Path) -> dict[str, Any]:
    """The CLI's rank stage on a fresh copy of ``model`` and no earlier checkpoints, measured."""
    shutil.rmtree(out / "model", ignore_errors=True)
    shutil.rmtree(out / "train", ignore_errors=True)  # same run key: it would resume, not train
    shutil.copytree(model, out / "model")
    measured = run_measured(stage_command("rank", Size.of("small"), out), out / "rank.log")
    if measured["returncode"] != 0:
        raise SystemExit(f"the rank stage failed, see {out / 'rank.log'}")
    manifest = json.loads((out / "model" / "manifest.json").read_text())
    measured.pop("timeline_s_rss_pss_mib")
    return {**measured, "metrics": manifest["stages"]["rank"]["metrics"]["validation"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, required=True, help="a dir with data/, features/, model/")
    parser.add_argument("--repeat", type=int, default=5, help="copies of each user in every split")
    parser.add_argument("--work", type=Path, help="work directory, kept (default: a temporary one)")
    parser.add_argument("--baseline", type=Path, help="this script's result at an earlier commit")
    parser.add_argument("--out", type=Path, help="result JSON (default: bench/results/rank_memory.json)")
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="raymm-rank-memory-", dir="/tmp"))
    out = work / "run"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    try:
        events = repeated_data(args.source / "data", out / "data", args.repeat)
        (out / "features").symlink_to((args.source / "features").resolve())
        shutil.copytree(args.source / "model", out / "model")
        log(BENCH, f"repeated the users x{args.repeat}: {events}")
        examples = examples_memory(out)
        log(BENCH, f"examples: {examples['examples']}, build peak {examples['build_peak_mib']:.0f} MiB")
        stage = stage_memory(out, args.source / "model")
        log(BENCH, f"stage: {stage['wall_s']:.0f}s, peak tree PSS {stage['peak_pss_sum_mib']:.0f} MiB")
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    git = ["git", "-C", str(ROOT)]
    commit = subprocess.run(
        [*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    ).stdout.strip()
    changed = subprocess.run([*git, "status", "--porcelain", "raymm"], capture_output=True, text=True).stdout
    report: dict[str, Any] = {
        "question": "where does the rank stage hold its examples (driver arrays, Ray's object store, the "
        "training worker), and how much at a log that runs here?",
        "commit": commit + (" with raymm/ changed" if changed.strip() else ""),
        "repeat": args.repeat,
        "events": events,
        "settings": list(SETTINGS),
        "examples": examples,
        "stage": stage,
    }
    if args.baseline is not None:
        baseline = json.loads(args.baseline.read_text())
        report["baseline"] = {k: baseline[k] for k in ("commit", "repeat", "events", "examples", "stage")}
        report["vs_baseline"] = {
            "build_peak": round(examples["build_peak_mib"] / baseline["examples"]["build_peak_mib"], 3),
            "held": round(examples["held_mib"] / baseline["examples"]["held_mib"], 3),
            "stage_peak_pss": round(stage["peak_pss_sum_mib"] / baseline["stage"]["peak_pss_sum_mib"], 3),
        }
    finish(BENCH, report, args.out or RESULTS / f"{BENCH}.json")


if __name__ == "__main__":
    main()
