"""deploy/: every manifest validates offline against Kubernetes' own schemas (and the
CRDs' for KServe and the Prometheus Operator), and the numbers that must agree do."""
from __future__ import annotations

import copy
import json
import re
import shutil
from pathlib import Path

import pytest
import yaml

from tests.unit.k8s_validate import validate

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
MANIFESTS = [DEPLOY / "k8s" / "navi.yaml", DEPLOY / "k8s" / "servicemonitor.yaml",
             DEPLOY / "kserve" / "navi-runtime.yaml", DEPLOY / "kserve" / "inference-service.yaml"]


def documents() -> list[dict]:
    return [doc for path in MANIFESTS for doc in yaml.safe_load_all(path.read_text()) if doc]


def by_kind(kind: str) -> dict:
    (doc,) = [d for d in documents() if d["kind"] == kind]
    return doc


def test_every_manifest_in_deploy_is_listed():
    shipped = {p for p in DEPLOY.rglob("*.yaml") if p != DEPLOY / "kserve" / "navi.yaml"}
    assert shipped == set(MANIFESTS)
    assert {d["kind"] for d in documents()} == {
        "Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget", "ServiceMonitor",
        "ClusterServingRuntime", "InferenceService"}


@pytest.mark.parametrize("doc", documents(), ids=lambda d: d["kind"])
def test_manifest_validates(doc):
    assert validate(doc) == []


def test_the_validator_catches_mistakes():
    deployment = by_kind("Deployment")
    container = ["spec", "template", "spec", "containers", 0]

    def mutated(doc, path, change):
        doc = copy.deepcopy(doc)
        target = doc
        for key in path:
            target = target[key]
        change(target)
        return doc

    typo = mutated(deployment, container, lambda c: c.update(readinesProbe=c.pop("readinessProbe")))
    assert validate(typo) == ["Deployment.spec.template.spec.containers[0].readinesProbe: unknown field of V1Container"]
    wrong_type = mutated(deployment, container + ["ports", 0], lambda p: p.update(containerPort="8500"))
    assert "expected int" in validate(wrong_type)[0]
    unnamed = mutated(deployment, container, lambda c: c.pop("name"))
    assert "name" in validate(unnamed)[0]
    runtime = by_kind("ClusterServingRuntime")
    assert validate(mutated(runtime, ["spec"], lambda s: s.update(protocolVersion=["grpc-v2"]))) == [
        "ClusterServingRuntime.spec.protocolVersion: unknown field"]
    assert "minimum" in validate(mutated(runtime, ["spec", "supportedModelFormats", 0],
                                         lambda f: f.update(priority=0)))[0]
    isvc = by_kind("InferenceService")
    assert "unknown field" in validate(mutated(isvc, ["spec", "predictor", "model"],
                                               lambda m: m.update(storageURI="x")))[0]
    monitor = by_kind("ServiceMonitor")
    assert "expected array" in validate(mutated(monitor, ["spec"], lambda s: s.update(endpoints={"port": "x"})))[0]


def _flag(args: list[str], flag: str) -> str:
    for index, arg in enumerate(args):
        if arg.startswith(flag + "="):
            return arg.split("=", 1)[1]
        if arg == flag:
            return args[index + 1]
    raise AssertionError(f"{flag} not in {args}")


def _drain_budget_s(pod_spec: dict, container: dict) -> float:
    """preStop sleep + navi's drain: --shutdown-grace-secs for requests, as long again closing models."""
    from navi.settings import ServerSettings

    grace_s = float(_flag(container["args"], "--shutdown-grace-secs"))
    assert grace_s == ServerSettings.model_fields["shutdown_grace_s"].default
    (sleep_s,) = container["lifecycle"]["preStop"]["exec"]["command"][1:]
    return float(sleep_s) + 2 * grace_s


def test_probes_ports_and_grace_period_agree_with_navi():
    deployment = by_kind("Deployment")
    pod = deployment["spec"]["template"]["spec"]
    (navi,) = pod["containers"]
    port = int(_flag(navi["args"], "--port"))
    metrics_port = int(_flag(navi["args"], "--prometheus-port"))
    assert {p["name"]: p["containerPort"] for p in navi["ports"]} == {"grpc": port, "metrics": metrics_port}
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert navi[probe]["grpc"] == {"port": port}  # service "" = the whole server
    assert pod["terminationGracePeriodSeconds"] >= _drain_budget_s(pod, navi) + 5
    assert pod["securityContext"]["runAsNonRoot"] is True
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/port"] == str(metrics_port)
    service = by_kind("Service")
    assert {p["name"]: p["port"] for p in service["spec"]["ports"]} == {"grpc": port, "metrics": metrics_port}
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    for selector in (service["spec"]["selector"], by_kind("PodDisruptionBudget")["spec"]["selector"]["matchLabels"],
                     by_kind("ServiceMonitor")["spec"]["selector"]["matchLabels"]):
        assert selector.items() <= labels.items()
    assert by_kind("HorizontalPodAutoscaler")["spec"]["scaleTargetRef"]["name"] == deployment["metadata"]["name"]
    assert by_kind("ServiceMonitor")["spec"]["endpoints"][0]["port"] == "metrics"

    runtime = by_kind("ClusterServingRuntime")["spec"]
    (container,) = runtime["containers"]
    assert runtime["protocolVersions"] == ["grpc-v2", "grpc-v1"]
    assert container["ports"] == [{"name": "h2c", "containerPort": int(_flag(container["args"], "--port")),
                                   "protocol": "TCP"}]
    assert runtime["annotations"]["prometheus.kserve.io/port"] == _flag(container["args"], "--prometheus-port")
    predictor = by_kind("InferenceService")["spec"]["predictor"]
    assert predictor["terminationGracePeriodSeconds"] >= _drain_budget_s(predictor, container) + 5
    assert predictor["model"]["runtime"] == by_kind("ClusterServingRuntime")["metadata"]["name"]


def test_dockerfile_health_check_and_command_use_the_same_port():
    text = (DEPLOY / "Dockerfile").read_text()
    health = json.loads(re.search(r"HEALTHCHECK[^\n]*\\\n\s*CMD (\[.*\])", text).group(1))
    command = json.loads(re.search(r"^CMD (\[.*\])", text, re.M).group(1))
    assert health[:2] == ["navi", "health"]
    assert _flag(health, "--target").endswith(":" + _flag(command, "--port"))
    assert "USER 10001" in text and "--no-index" in text


def test_kserve_model_list_serves_the_demo_repository(tmp_path):
    """deploy/kserve/navi.yaml at the root of a copy of models/ names both demo models."""
    from navi.config import build_settings

    repo = tmp_path / "mnt-models"
    shutil.copytree(REPO / "models", repo)
    shutil.copy(DEPLOY / "kserve" / "navi.yaml", repo / "navi.yaml")
    settings = build_settings({}, repo / "navi.yaml", ())
    assert [(m.name, m.model_dir) for m in settings.models] == [("home", repo / "home"), ("dense", repo / "dense")]
