"""``raymm submit`` against a real two-node Ray cluster on this machine.

Two ``ray start --block`` processes (a head with the dashboard's job API, and a worker), on ports of
their own and a temp dir of their own: the session's Ray instance is untouched, the test process
never joins this cluster (it talks to it over HTTP only), and only the processes started here are
stopped (``ray stop`` would stop every Ray on the machine). The cluster starts without the S3
settings, so the jobs reach the loopback S3 server (moto) only through the runtime environment
that ``raymm submit --env`` gives them: a real cluster's nodes share no disk.

Each node has 3 CPUs and each encoder actor and each Ray Train worker asks for 2, so two of them
never share a node; Ray's state API (the dashboard's) then shows where each one ran.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

import raymm
from raymm.cli import main
from raymm.config import load_config
from raymm.data import io
from raymm.data.synth import synthesize
from raymm.features.store import load_features
from tests.fixtures import free_port

NODE_CPUS = 3
#: Tiny, and sized so that the two encoder actors and the two Train workers land one per node.
CONFIG = """\
seed: 0
synth: {size: tiny}
extract:
  device: cpu
  modalities: [text]
  text:
    kind: tfidf
    tfidf_dim: 256
    resources: {batch_size: 64, num_cpus: 2, min_actors: 2, max_actors: 2}
model:
  align: {method: none, shared_dim: 32}
  towers: {embed_dim: 32}
train:
  epochs: 2
  batch_size: 128
  run: {num_workers: 2, cpus_per_worker: 2, torch_threads: 1}
"""
#: What the jobs need to reach the S3 server; the cluster's own environment lacks them.
S3_VARIABLES = (
    "AWS_ENDPOINT_URL",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_REGION",
    "AWS_EC2_METADATA_DISABLED",
)


@dataclass
class LoopbackCluster:
    """A head and a worker node on this machine, each a ``ray start --block`` process of its own."""

    temp_dir: str
    dashboard: str
    processes: list[subprocess.Popen[bytes]]

    @classmethod
    def start(cls) -> LoopbackCluster:
        # Short: Ray's unix socket paths live under it and must stay under 108 characters.
        temp_dir = tempfile.mkdtemp(prefix="rmc-", dir="/tmp")
        env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_") and k not in ("RAY_ADDRESS",)}
        # A node with raymm installed (the image) has `raymm` on its PATH: the job's entrypoint.
        env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
        # No token auth on a private test cluster; no 30 s drain of the nodes when they are stopped.
        env.update(
            RAY_AUTH_MODE="disabled", RAY_USAGE_STATS_ENABLED="0", RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S="0"
        )
        gcs_port, dashboard_port = free_port(), free_port()
        cluster = cls(temp_dir, f"http://127.0.0.1:{dashboard_port}", [])
        head = [
            "--head",
            f"--port={gcs_port}",
            "--include-dashboard=true",
            "--dashboard-host=127.0.0.1",
            f"--dashboard-port={dashboard_port}",
            f"--ray-client-server-port={free_port()}",
        ]
        try:
            cluster._node(head, env, "head")
            cluster._wait(nodes=1)
            cluster._node([f"--address=127.0.0.1:{gcs_port}"], env, "worker")
            cluster._wait(nodes=2)
        except BaseException:
            cluster.stop()
            raise
        return cluster

    def _node(self, args: list[str], env: dict[str, str], name: str) -> None:
        ray = Path(sys.executable).with_name("ray")
        command = [
            str(ray),
            "start",
            "--block",
            *args,
            f"--num-cpus={NODE_CPUS}",
            f"--temp-dir={self.temp_dir}",
            "--node-ip-address=127.0.0.1",  # loopback only: no traffic to the machine's other addresses
        ]
        # Each node's agents on ports of their own (their defaults are fixed numbers).
        for option in (
            "dashboard-agent-listen-port",
            "dashboard-agent-grpc-port",
            "runtime-env-agent-port",
            "metrics-export-port",
        ):
            command.append(f"--{option}={free_port()}")
        command += ["--object-store-memory", str(256 * 1024**2), "--disable-usage-stats"]
        log = open(Path(self.temp_dir) / f"{name}.out", "wb")  # noqa: SIM115 (the process owns it)
        # A session of its own: stopping it can reach its whole process group and nothing else.
        self.processes.append(
            subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        )

    def _wait(self, nodes: int, timeout_s: float = 90.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for process in self.processes:
                if process.poll() is not None:
                    raise RuntimeError(f"a Ray node exited ({process.returncode}): {self.log_tail()}")
            try:
                with urllib.request.urlopen(f"{self.dashboard}/api/v0/nodes", timeout=2) as answer:
                    listed = json.load(answer)["data"]["result"]["result"]
                if sum(node["state"] == "ALIVE" for node in listed) >= nodes:
                    return
            except (OSError, ValueError, KeyError):
                pass
            time.sleep(0.5)
        raise RuntimeError(f"the cluster did not reach {nodes} node(s) in {timeout_s} s: {self.log_tail()}")

    def log_tail(self) -> str:
        return "\n".join(
            f"--- {path.name}\n" + path.read_text(errors="replace")[-2000:]
            for path in sorted(Path(self.temp_dir).glob("*.out"))
        )

    def stop(self) -> None:
        """SIGTERM each node's ``ray start`` (it stops its own processes), then kill what is left of
        its process group; the worker first."""
        for process in reversed(self.processes):
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    process.wait(timeout=30)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        shutil.rmtree(self.temp_dir, ignore_errors=True)


@pytest.fixture
def cluster() -> Iterator[LoopbackCluster]:
    running = LoopbackCluster.start()
    try:
        yield running
    finally:
        running.stop()


def _submit(stage: str, job_id: str, cluster: LoopbackCluster, project: Path, out: str) -> int:
    """``raymm submit <stage>`` as a user types it, S3 settings passed by name."""
    env = [word for name in S3_VARIABLES for word in ("--env", name)]
    return main(
        [
            "submit",
            stage,
            "--config",
            str(project / "cluster.yaml"),
            "--set",
            f"out={out}",
            "--quiet",
            "--address",
            cluster.dashboard,
            "--working-dir",
            str(project),
            "--submission-id",
            job_id,
            *env,
        ]
    )


def _nodes_of(cluster: LoopbackCluster, job_id: str, class_name: str) -> set[str]:
    """The nodes on which the actors of ``class_name`` of job ``job_id`` ran (Ray's state API)."""
    from ray.job_submission import JobSubmissionClient
    from ray.util.state import list_actors

    ray_job = JobSubmissionClient(cluster.dashboard).get_job_info(job_id).job_id
    actors = list_actors(
        address=cluster.dashboard,
        filters=[("job_id", "=", ray_job), ("class_name", "=", class_name)],
        detail=True,
        raise_on_missing_output=False,
    )
    return {actor.node_id for actor in actors if actor.node_id}


def test_extract_then_train_run_as_jobs_on_both_nodes_and_write_to_s3(
    cluster: LoopbackCluster,
    s3_dir: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from ray.util.state import list_nodes

    for name in ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS"):  # Ray would let them override an address
        monkeypatch.delenv(name, raising=False)
    (tmp_path / "cluster.yaml").write_text(CONFIG)
    config = load_config(tmp_path / "cluster.yaml", [f"out={s3_dir}"])
    synthesize(config.synth, config.stage_dir("data"), seed=0, progress=False)

    assert _submit("extract", "raymm-test-extract", cluster, tmp_path, s3_dir) == 0
    assert _submit("train", "raymm-test-train", cluster, tmp_path, s3_dir) == 0
    logs = capsys.readouterr().out
    assert "raymm extract" in logs and "raymm train" in logs  # the jobs' own summaries, streamed here

    features = load_features(config.stage_dir("features"))
    assert features.num_rows == 240 and features.column("text").null_count < 240
    model = raymm.load_model(config.stage_dir("model"))
    assert len(model.recommend([str(features.column("item_id")[0])], k=5)) == 5
    assert io.exists(config.stage_dir("train"))  # Ray Train's checkpoints, on S3 too

    nodes = {node.node_id for node in list_nodes(address=cluster.dashboard) if node.state == "ALIVE"}
    assert len(nodes) == 2
    assert _nodes_of(cluster, "raymm-test-extract", "MapWorker(MapBatches(ModalityEncoderActor))") == nodes
    assert _nodes_of(cluster, "raymm-test-train", "RayTrainWorker") == nodes

    # A stage that fails on the cluster fails `raymm submit` with the stage's own exit code.
    assert _submit("evaluate", "raymm-test-evaluate", cluster, tmp_path, f"{s3_dir}/nothing-here") == 2
    assert "raymm: error: job raymm-test-evaluate FAILED" in capsys.readouterr().err
