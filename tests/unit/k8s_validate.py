"""Offline validation of Kubernetes manifests, strict about unknown fields.

Built-in kinds are checked against the `kubernetes` Python client's models
(generated from Kubernetes' own OpenAPI): every key must be one of the model's
``attribute_map`` names, recursively, each value of the declared type, and the
client's deserializer then enforces required fields. (The client alone ignores
unknown keys, so a typo such as ``readinesProbe`` would pass it.) Custom
resources are checked against their CRD's structural OpenAPI v3 schema
(tests/data/crds), which is how the API server prunes and validates them.
"""
from __future__ import annotations

import gzip
import json
import re
from pathlib import Path

CRD_DIR = Path(__file__).resolve().parents[1] / "data" / "crds"

# apiVersion, kind -> the client's model class name
BUILTIN = {
    ("apps/v1", "Deployment"): "V1Deployment",
    ("v1", "Service"): "V1Service",
    ("autoscaling/v2", "HorizontalPodAutoscaler"): "V2HorizontalPodAutoscaler",
    ("policy/v1", "PodDisruptionBudget"): "V1PodDisruptionBudget",
}
_SCALARS = {"str": str, "int": int, "bool": bool, "float": (int, float)}


def _check_model(value, type_name: str, path: str, errors: list[str]) -> None:
    import kubernetes.client.models as models

    if type_name == "object":  # IntOrString, Quantity-like and free-form values
        return
    if type_name in _SCALARS:
        if not isinstance(value, _SCALARS[type_name]) or (type_name != "bool" and isinstance(value, bool)):
            errors.append(f"{path}: expected {type_name}, got {type(value).__name__} {value!r}")
        return
    if type_name in ("datetime", "date", "bytes"):
        if not isinstance(value, str):
            errors.append(f"{path}: expected a timestamp string")
        return
    match = re.fullmatch(r"[Ll]ist\[(.+)\]", type_name)
    if match:
        if not isinstance(value, list):
            errors.append(f"{path}: expected a list")
            return
        for index, item in enumerate(value):
            _check_model(item, match.group(1), f"{path}[{index}]", errors)
        return
    match = re.fullmatch(r"[Dd]ict\[str, (.+)\]|dict\(str, (.+)\)", type_name)
    if match:
        if not isinstance(value, dict):
            errors.append(f"{path}: expected a mapping")
            return
        for key, item in value.items():
            _check_model(item, match.group(1) or match.group(2), f"{path}.{key}", errors)
        return
    model = getattr(models, type_name)
    if not isinstance(value, dict):
        errors.append(f"{path}: expected a {type_name} mapping")
        return
    by_json_name = {json_name: attr for attr, json_name in model.attribute_map.items()}
    for key, item in value.items():
        if key not in by_json_name:
            errors.append(f"{path}.{key}: unknown field of {type_name}")
            continue
        _check_model(item, model.openapi_types[by_json_name[key]], f"{path}.{key}", errors)


def validate_builtin(doc: dict) -> list[str]:
    """Errors of a built-in kind's document (empty = valid)."""
    from kubernetes.client import ApiClient

    type_name = BUILTIN.get((doc.get("apiVersion"), doc.get("kind")))
    if type_name is None:
        return [f"no model for apiVersion {doc.get('apiVersion')} kind {doc.get('kind')}"]
    errors: list[str] = []
    _check_model(doc, type_name, doc["kind"], errors)
    if not errors:
        try:  # required fields (e.g. a container's name) are checked as the model is built
            ApiClient()._ApiClient__deserialize(doc, type_name)
        except (ValueError, TypeError) as exc:
            errors.append(f"{doc['kind']}: {exc}")
    return errors


def crd_schema(api_version: str, kind: str) -> dict | None:
    group, _, version = api_version.rpartition("/")
    path = CRD_DIR / f"{group}_{version}_{kind}.json.gz"
    if not path.is_file():
        return None
    return json.loads(gzip.decompress(path.read_bytes()))["openAPIV3Schema"]


_TYPES = {"string": str, "boolean": bool, "object": dict, "array": list, "number": (int, float), "integer": int}


def _check_schema(value, schema: dict, path: str, errors: list[str]) -> None:
    if schema.get("x-kubernetes-int-or-string"):
        if not isinstance(value, (int, str)) or isinstance(value, bool):
            errors.append(f"{path}: expected an integer or a string")
        return
    expected = schema.get("type")
    if expected:
        python_type = _TYPES[expected]
        if not isinstance(value, python_type) or (expected in ("integer", "number") and isinstance(value, bool)):
            errors.append(f"{path}: expected {expected}, got {type(value).__name__} {value!r}")
            return
    if "enum" in schema and value not in schema["enum"]:
        errors.append(f"{path}: {value!r} is not one of {schema['enum']}")
    if "minimum" in schema and isinstance(value, (int, float)) and value < schema["minimum"]:
        errors.append(f"{path}: {value} < minimum {schema['minimum']}")
    if isinstance(value, dict):
        for key in schema.get("required", ()):
            if key not in value:
                errors.append(f"{path}: missing required field {key}")
        properties = schema.get("properties")
        for key, item in value.items():
            if properties is not None and key in properties:
                _check_schema(item, properties[key], f"{path}.{key}", errors)
            elif isinstance(schema.get("additionalProperties"), dict):
                _check_schema(item, schema["additionalProperties"], f"{path}.{key}", errors)
            elif not schema.get("x-kubernetes-preserve-unknown-fields") and not (
                    path.count(".") == 1 and path.endswith(".metadata")):
                errors.append(f"{path}.{key}: unknown field")
    if isinstance(value, list) and "items" in schema:
        for index, item in enumerate(value):
            _check_schema(item, schema["items"], f"{path}[{index}]", errors)


def validate_custom(doc: dict) -> list[str]:
    """Errors of a custom resource against its CRD schema (empty = valid); metadata as ObjectMeta."""
    schema = crd_schema(doc.get("apiVersion", ""), doc.get("kind", ""))
    if schema is None:
        return [f"no CRD schema for apiVersion {doc.get('apiVersion')} kind {doc.get('kind')}"]
    errors: list[str] = []
    _check_schema(doc, schema, doc["kind"], errors)
    _check_model(doc.get("metadata", {}), "V1ObjectMeta", f"{doc['kind']}.metadata", errors)
    return errors


def validate(doc: dict) -> list[str]:
    """Errors of any manifest document this project ships."""
    if (doc.get("apiVersion"), doc.get("kind")) in BUILTIN:
        return validate_builtin(doc)
    return validate_custom(doc)
