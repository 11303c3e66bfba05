"""``raymm deploy render``: the committed ``deploy/serve.yaml`` and ``k8s/`` are what the command
renders now; every custom resource validates strictly against the upstream CRDs (a misspelled
field fails, naming it); the values the CRDs leave unchecked are checked here; the RayService
carries the same Serve config as ``deploy/serve.yaml``; and no secret is ever written."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from raymm.cli import main
from raymm.config import RaymmConfig, load_config
from raymm.deploy.render import HEADER, SERVE_CONFIG, cluster_config, render, stale
from raymm.deploy.serve_config import check_serve_config, serve_config
from raymm.errors import ConfigError
from raymm.stream.events import DEAD_LETTER_TOPIC, EVENTS_TOPIC, ITEMS_TOPIC
from tests.deploy.crds import problems

ROOT = Path(__file__).resolve().parents[2]
#: KubeRay v1.7.0's values, which its CRDs do not enumerate (ray-operator/apis/ray/v1).
SUBMISSION_MODES = {"K8sJobMode", "HTTPMode", "InteractiveMode", "SidecarMode"}
UPGRADE_TYPES = {"NewCluster", "NewClusterWithIncrementalUpgrade", "None"}


@pytest.fixture(scope="module")
def config() -> RaymmConfig:
    """The committed files' source: the defaults, with no ``RAYMM__*`` variable of this shell."""
    return load_config(None, environ={})


@pytest.fixture(scope="module")
def files(config: RaymmConfig) -> dict[str, str]:
    return render(config)


def _resources(files: dict[str, str]) -> list[tuple[str, dict[str, Any]]]:
    return [
        (path, document)
        for path, text in files.items()
        if path.startswith("k8s/")
        for document in yaml.safe_load_all(text)
    ]


def _kind(files: dict[str, str], variant: str, kind: str) -> list[dict[str, Any]]:
    return [r for path, r in _resources(files) if path.startswith(f"k8s/{variant}/") and r["kind"] == kind]


def test_the_committed_files_are_what_the_command_renders_now(files: dict[str, str]) -> None:
    outdated = stale(files, ROOT)
    assert not outdated, (
        f"{outdated} differ from what the configuration renders now (or are no longer rendered): "
        "run `raymm deploy render` at the repository root and commit deploy/ and k8s/"
    )


def test_serve_yaml_parses_as_ray_serves_deploy_schema(files: dict[str, str]) -> None:
    schema = check_serve_config(yaml.safe_load(files[SERVE_CONFIG]))
    (app,) = schema.applications
    assert app.import_path == "raymm.serve.app:app_builder"
    assert set(app.args) == {"config", "bootstrap_servers", "model"}
    (recommender,) = app.deployments
    assert recommender.name == "Recommender" and recommender.user_config == {
        "model": "s3://raymm/model",
        "version": "v1",
    }
    assert recommender.ray_actor_options.num_cpus == 0.5 and recommender.num_replicas == 1
    assert schema.http_options.host == "0.0.0.0"
    # serve.access_log's default: no access line per request from the proxies or the replicas
    assert schema.logging_config is not None and schema.logging_config.enable_access_log is False
    assert recommender.logging_config is not None
    assert recommender.logging_config.enable_access_log is False


def test_serve_access_log_turns_the_access_log_on_in_the_proxies_and_the_replicas() -> None:
    config = load_config(None, ["serve.access_log=true", "serve.model=s3://raymm/model"], environ={})
    schema = check_serve_config(serve_config(config, bootstrap_servers="kafka:9092"))
    (recommender,) = schema.applications[0].deployments
    assert schema.logging_config is not None and schema.logging_config.enable_access_log is True
    assert recommender.logging_config is not None
    assert recommender.logging_config.enable_access_log is True


def test_every_custom_resource_validates_strictly_against_its_crd(files: dict[str, str]) -> None:
    resources = [(p, r) for p, r in _resources(files) if r["apiVersion"] != "v1"]
    kinds = {r["kind"] for _, r in resources}
    assert kinds == {
        "RayJob",
        "RayService",
        "Kafka",
        "KafkaNodePool",
        "KafkaTopic",
        "KafkaUser",
        "PodMonitor",
    }
    found = [f"{path}: {line}" for path, resource in resources for line in problems(resource)]
    assert not found, "\n".join(found)


def test_a_misspelled_field_fails_naming_it(files: dict[str, str]) -> None:
    (job,) = [r for r in _kind(files, "dev", "RayJob") if r["metadata"]["name"] == "raymm-train"]
    broken = copy.deepcopy(job)
    broken["spec"]["shutdownAfterJobFinishs"] = broken["spec"].pop("shutdownAfterJobFinishes")
    broken["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]["containers"][0]["imag"] = "x"
    found = problems(broken)
    print("\n".join(found))
    assert any("'shutdownAfterJobFinishs' was unexpected" in line for line in found)
    assert any(
        "spec.rayClusterSpec.headGroupSpec.template.spec.containers.0" in line and "'imag'" in line
        for line in found
    )
    (service,) = _kind(files, "prod", "RayService")
    serve = yaml.safe_load(service["spec"]["serveConfigV2"])
    serve["applications"][0]["deployments"][0]["num_replica"] = 3
    with pytest.raises(ConfigError, match=r"'applications\[0\]\.deployments\[0\]\.num_replica'"):
        check_serve_config(serve)


@pytest.mark.parametrize("variant", ["dev", "prod"])
def test_what_the_crds_leave_unchecked(files: dict[str, str], variant: str) -> None:
    jobs = _kind(files, variant, "RayJob")
    assert {j["metadata"]["name"] for j in jobs} == {"raymm-extract", "raymm-train"}
    for job in jobs:
        spec = job["spec"]
        assert spec["submissionMode"] in SUBMISSION_MODES
        assert spec["shutdownAfterJobFinishes"] is True
        assert spec["ttlSecondsAfterFinished"] >= 0 and spec["activeDeadlineSeconds"] > 0
        assert spec["entrypoint"].startswith(f"raymm {job['metadata']['name'].removeprefix('raymm-')} ")
    (service,) = _kind(files, variant, "RayService")
    spec = service["spec"]
    assert spec["upgradeStrategy"]["type"] in UPGRADE_TYPES
    assert spec["upgradeStrategy"]["type"] == "NewCluster" and spec["rayClusterDeletionDelaySeconds"] > 0
    assert spec["rayClusterConfig"]["enableInTreeAutoscaling"] is True
    check_serve_config(yaml.safe_load(spec["serveConfigV2"]), f"{variant} serveConfigV2")
    gpu_groups = [
        group["groupName"]
        for job in jobs
        for group in job["spec"]["rayClusterSpec"]["workerGroupSpecs"]
        if "nvidia.com/gpu" in group["template"]["spec"]["containers"][0]["resources"]["limits"]
    ]
    assert gpu_groups == (["gpu", "gpu"] if variant == "prod" else [])


@pytest.mark.parametrize("variant", ["dev", "prod"])
def test_the_rayservice_carries_the_serve_config_of_the_same_source(
    files: dict[str, str], config: RaymmConfig, variant: str
) -> None:
    (service,) = _kind(files, variant, "RayService")
    carried = yaml.safe_load(service["spec"]["serveConfigV2"])
    chosen = config.deploy.variants()[variant]
    bootstrap = f"raymm-kafka-bootstrap.raymm.svc:{9093 if variant == 'prod' else 9092}"
    assert carried == serve_config(
        cluster_config(config, chosen),
        bootstrap_servers=bootstrap,
        max_replicas=chosen.recommender_max_replicas,
        target_ongoing_requests=chosen.target_ongoing_requests,
    )
    # The same application as deploy/serve.yaml; only Kafka, sizes and the variant's keys differ.
    plain = yaml.safe_load(files[SERVE_CONFIG])
    assert carried["applications"][0]["import_path"] == plain["applications"][0]["import_path"]
    assert carried["applications"][0]["args"]["model"] == plain["applications"][0]["args"]["model"]
    for key in ("proxy_location", "http_options"):
        assert carried[key] == plain[key]


@pytest.mark.parametrize("variant", ["dev", "prod"])
def test_kafka_topics_users_and_credentials(files: dict[str, str], config: RaymmConfig, variant: str) -> None:
    topics = {t["metadata"]["name"]: t["spec"] for t in _kind(files, variant, "KafkaTopic")}
    assert {name: spec["partitions"] for name, spec in topics.items()} == {
        EVENTS_TOPIC: config.kafka.partitions,
        ITEMS_TOPIC: config.kafka.item_partitions,
        DEAD_LETTER_TOPIC: 1,
    }
    assert "compact" in topics[DEAD_LETTER_TOPIC]["config"]["cleanup.policy"]
    (kafka,) = _kind(files, variant, "Kafka")
    pools = _kind(files, variant, "KafkaNodePool")
    assert {role for pool in pools for role in pool["spec"]["roles"]} == {"controller", "broker"}
    assert all(p["metadata"]["labels"]["strimzi.io/cluster"] == kafka["metadata"]["name"] for p in pools)
    (user,) = _kind(files, variant, "KafkaUser")
    assert user["spec"]["authentication"]["type"] == "scram-sha-512"
    (service,) = _kind(files, variant, "RayService")
    for group in [
        service["spec"]["rayClusterConfig"]["headGroupSpec"],
        *service["spec"]["rayClusterConfig"]["workerGroupSpecs"],
    ]:
        container = group["template"]["spec"]["containers"][0]
        env = {e["name"]: e for e in container["env"]}
        assert env["RAYMM__KAFKA__SASL_PLAIN_PASSWORD"]["valueFrom"]["secretKeyRef"] == {
            "name": user["metadata"]["name"],
            "key": "password",
        }
        protocol = env["RAYMM__KAFKA__SECURITY_PROTOCOL"]["value"]
        assert protocol == ("SASL_SSL" if variant == "prod" else "SASL_PLAINTEXT")
        assert container["envFrom"] == [{"secretRef": {"name": "raymm-s3"}}]
        # What the pods' environment makes of the rendered config: a valid SASL client.
        pod_env = {name: e["value"] for name, e in env.items() if "value" in e}
        serve_args = yaml.safe_load(service["spec"]["serveConfigV2"])["applications"][0]["args"]
        from raymm.config import load_document

        loaded = load_document(
            serve_args["config"], environ={**pod_env, "RAYMM__KAFKA__SASL_PLAIN_PASSWORD": "from-the-secret"}
        )
        assert loaded.kafka.sasl_mechanism == "SCRAM-SHA-512" and loaded.kafka.security_protocol == protocol


def test_no_password_is_ever_rendered() -> None:
    secret = "s3cret-from-the-environment"
    config = load_config(
        None,
        [
            "kafka.security_protocol=SASL_SSL",
            "kafka.sasl_mechanism=SCRAM-SHA-512",
            "kafka.sasl_plain_username=u",
        ],
        environ={"RAYMM__KAFKA__SASL_PLAIN_PASSWORD": secret},
    )
    assert config.kafka.sasl_plain_password is not None
    rendered = render(config)
    assert not [path for path, text in rendered.items() if secret in text]
    args = yaml.safe_load(rendered[SERVE_CONFIG])["applications"][0]["args"]
    assert args["config"]["kafka"] == {
        "security_protocol": "SASL_SSL",
        "sasl_mechanism": "SCRAM-SHA-512",
        "sasl_plain_username": "u",
    }


def test_a_relative_model_path_is_refused() -> None:
    with pytest.raises(ConfigError, match="relative path"):
        render(load_config(None, ["serve.model=out/model"], environ={}))


def test_the_command_writes_checks_and_says_what_is_stale(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["deploy", "render", "--out", str(tmp_path)]) == 0
    assert (tmp_path / SERVE_CONFIG).read_text().startswith(HEADER)
    assert sorted(p.name for p in (tmp_path / "k8s" / "dev").iterdir()) == sorted(
        p.name for p in (tmp_path / "k8s" / "prod").iterdir()
    )
    assert main(["deploy", "render", "--out", str(tmp_path), "--check"]) == 0
    assert not (tmp_path / "logs").exists()  # renders with no Ray, so keeps no log file
    capsys.readouterr()
    assert (
        main(
            [
                "deploy",
                "render",
                "--out",
                str(tmp_path),
                "--check",
                "--set",
                "deploy.prod.job_workers.max_replicas=9",
            ]
        )
        == 1
    )
    err = capsys.readouterr().err
    assert "k8s/prod/rayjob-extract.yaml" in err and "k8s/dev/" not in err
