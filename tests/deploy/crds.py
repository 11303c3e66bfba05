"""Strict offline validation of Kubernetes custom resources against the upstream CRDs in
``../shared/k8s-crds/`` (KubeRay, Strimzi, Prometheus Operator; read by path, never copied here).

Strict as kubeconform's strict mode: every object schema that declares ``properties`` and does not
carry ``x-kubernetes-preserve-unknown-fields`` gets ``additionalProperties: false``, so a
misspelled field is an error naming it. The CRD files are large (the RayJob's is 1.3 MB): each is
parsed and made strict once per test session (:func:`validators`).
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import jsonschema
import yaml

CRDS = Path(__file__).resolve().parents[2] / ".." / "shared" / "k8s-crds"


def strict(schema: dict[str, Any]) -> dict[str, Any]:
    """A copy of the OpenAPI v3 ``schema`` in which unknown fields are errors (see the module doc).

    Walks the schema's structure (``properties``, ``items``, ``additionalProperties``,
    ``anyOf``/``allOf``/``oneOf``), so a field that happens to be named ``properties`` is not taken
    for a keyword."""
    result = dict(schema)
    if isinstance(schema.get("properties"), dict):
        result["properties"] = {name: strict(sub) for name, sub in schema["properties"].items()}
        if "additionalProperties" not in schema and not schema.get("x-kubernetes-preserve-unknown-fields"):
            result["additionalProperties"] = False
    for key in ("items", "additionalProperties", "not"):
        if isinstance(schema.get(key), dict):
            result[key] = strict(schema[key])
    for key in ("anyOf", "allOf", "oneOf"):
        if isinstance(schema.get(key), list):
            result[key] = [strict(sub) if isinstance(sub, dict) else sub for sub in schema[key]]
    return result


@functools.cache
def validators() -> dict[tuple[str, str], jsonschema.protocols.Validator]:
    """``(apiVersion, kind)`` -> a strict validator, for every served version of every CRD."""
    if not CRDS.is_dir():
        raise FileNotFoundError(f"the CRD schemas are not at {CRDS.resolve()} (../shared/k8s-crds/)")
    found: dict[tuple[str, str], jsonschema.protocols.Validator] = {}
    for path in sorted(CRDS.glob("*.yaml")):
        for crd in yaml.load_all(path.read_text(), Loader=yaml.CSafeLoader):
            if not crd or crd.get("kind") != "CustomResourceDefinition":
                continue
            group, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"]
            for version in crd["spec"]["versions"]:
                if version.get("served"):
                    schema = strict(version["schema"]["openAPIV3Schema"])
                    validator = jsonschema.validators.validator_for(schema)
                    found[(f"{group}/{version['name']}", kind)] = validator(schema)
    return found


def problems(resource: dict[str, Any]) -> list[str]:
    """Every way ``resource`` breaks its CRD, one line each (``kind/name: path: message``); a
    resource whose ``apiVersion``/``kind`` no CRD serves is one problem."""
    name = f"{resource.get('kind')}/{resource.get('metadata', {}).get('name')}"
    validator = validators().get((resource.get("apiVersion", ""), resource.get("kind", "")))
    if validator is None:
        return [f"{name}: no CRD in {CRDS.name} serves apiVersion {resource.get('apiVersion')!r}"]
    return [
        f"{name}: {'.'.join(map(str, error.absolute_path)) or '(root)'}: {error.message}"
        for error in sorted(validator.iter_errors(resource), key=lambda e: list(map(str, e.absolute_path)))
    ]
