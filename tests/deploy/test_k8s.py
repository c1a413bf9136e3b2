"""deploy/k8s: every manifest validates against the Kubernetes OpenAPI schemas (kubernetes-validate,
offline, strict: unknown fields fail), and the pieces fit together: labels, names, images, settings.

CRDs have no schema in kubernetes-validate: the ServiceMonitor (monitoring.coreos.com/v1) is
checked structurally here instead, and kustomization.yaml (not an API object) by its file list.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path

import pytest
import yaml
from kubernetes_validate import ValidationError, validate

from app.core.config import Settings

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
# The oldest Kubernetes the manifests claim (HPA autoscaling/v2, PDB policy/v1, Job TTL) and the newest.
VERSIONS = ["1.29.0", "1.37.0"]
CRDS = {("monitoring.coreos.com/v1", "ServiceMonitor")}


def documents(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def manifests() -> list[tuple[str, dict]]:
    return [(f"{p.name}:{d['kind']}/{d['metadata']['name']}", d)
            for p in sorted(K8S.glob("*.yaml")) if p.name != "kustomization.yaml" for d in documents(p)]


def by_kind(kind: str) -> dict[str, dict]:
    return {d["metadata"]["name"]: d for _, d in manifests() if d["kind"] == kind}


def pod_specs() -> dict[str, dict]:
    """Pod spec of every workload, by workload name."""
    return {name: d["spec"]["template"]["spec"] for kind in ("Deployment", "Job") for name, d in by_kind(kind).items()}


def containers(spec: dict) -> list[dict]:
    return spec.get("initContainers", []) + spec["containers"]


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize(("label", "doc"), [m for m in manifests() if (m[1]["apiVersion"], m[1]["kind"]) not in CRDS],
                         ids=lambda v: v if isinstance(v, str) else "")
def test_manifest_matches_the_kubernetes_schema(label: str, doc: dict, version: str) -> None:
    validate(doc, version, strict=True)


def test_the_validator_rejects_what_kubernetes_would() -> None:
    api = copy.deepcopy(by_kind("Deployment")["lethe-api"])
    api["spec"]["template"]["spec"]["containers"][0]["imagePullPolicyy"] = "Always"
    with pytest.raises(ValidationError):
        validate(api, VERSIONS[-1], strict=True)


def test_kustomization_applies_every_manifest_but_the_secret_example() -> None:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    files = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml", "secret.example.yaml"}
    assert set(kustomization["resources"]) == files
    assert {i["name"] for i in kustomization["images"]} == {"lethe-api", "lethe-worker"}


def test_service_monitor_scrapes_the_api_service_metrics() -> None:
    (monitor,) = by_kind("ServiceMonitor").values()
    service = by_kind("Service")["lethe-api"]
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert monitor["spec"]["namespaceSelector"]["matchNames"] == [service["metadata"]["namespace"]]
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["path"] == "/metrics"
    assert endpoint["port"] in {p["name"] for p in service["spec"]["ports"]}


def test_service_hpa_and_pdb_point_at_the_api_pods() -> None:
    api = by_kind("Deployment")["lethe-api"]
    pod_labels = api["spec"]["template"]["metadata"]["labels"]
    assert by_kind("Service")["lethe-api"]["spec"]["selector"].items() <= pod_labels.items()
    assert by_kind("PodDisruptionBudget")["lethe-api"]["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    target = by_kind("HorizontalPodAutoscaler")["lethe-api"]["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", "lethe-api")
    assert "replicas" not in api["spec"]  # the HPA owns it
    probes = api["spec"]["template"]["spec"]["containers"][0]
    assert (probes["readinessProbe"]["httpGet"]["path"], probes["livenessProbe"]["httpGet"]["path"]) == \
        ("/readyz", "/healthz")


def test_gpu_worker_asks_for_a_gpu_and_tolerates_gpu_nodes() -> None:
    spec = pod_specs()["lethe-worker"]
    (worker,) = spec["containers"]
    assert worker["image"] == "lethe-worker"
    assert worker["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in spec["tolerations"]
    assert worker["command"][worker["command"].index("-Q") + 1] == "unlearn"


def test_every_celery_process_has_its_own_health_check_not_the_api_one() -> None:
    specs = pod_specs()
    for name, role in (("lethe-worker", "worker"), ("lethe-housekeeping", "worker"), ("lethe-beat", "beat")):
        (container,) = specs[name]["containers"]
        command = container["livenessProbe"]["exec"]["command"]
        assert command[1:3] == ["/srv/lethe/deploy/healthcheck.py", role], name
    (beat,) = specs["lethe-beat"]["containers"]
    schedule = beat["command"][beat["command"].index("-s") + 1]
    assert beat["livenessProbe"]["exec"]["command"][-2:] == ["--schedule", schedule]
    assert by_kind("Deployment")["lethe-beat"]["spec"]["replicas"] == 1
    assert by_kind("Deployment")["lethe-beat"]["spec"]["strategy"]["type"] == "Recreate"


def test_migrations_run_in_the_job_and_every_deployment_waits_for_head() -> None:
    job = pod_specs()["lethe-migrate"]
    assert [c["command"] for c in containers(job)] == [["lethe", "migrate"], ["lethe", "bootstrap"]]
    for name, spec in pod_specs().items():
        if name != "lethe-migrate":
            assert spec["initContainers"][0]["command"][-1] == "until lethe migrate --check; do sleep 5; done", name


def test_images_are_the_two_dockerfile_targets() -> None:
    targets = set(re.findall(r"^FROM \S+ AS (\S+)$", (ROOT / "Dockerfile").read_text(), flags=re.M))
    for name, spec in pod_specs().items():
        for c in containers(spec):
            assert c["image"] in {"lethe-api", "lethe-worker"} and c["image"].removeprefix("lethe-") in targets
            assert (c["image"] == "lethe-worker") == (name == "lethe-worker" and c in spec["containers"])


def test_settings_come_from_the_config_map_and_secrets_that_are_defined() -> None:
    fields = {f"LETHE_{n.upper()}" for n in Settings.model_fields} | {"LETHE_MODELS"}
    config = by_kind("ConfigMap")["lethe-config"]["data"]
    secrets = by_kind("Secret")  # from secret.example.yaml: created by hand, same names
    names = set(config) | set(secrets["lethe-secrets"]["stringData"])
    assert names <= fields, names - fields
    assert "LETHE_MODELS" not in names and "LETHE_DEMO_MODELS" not in names  # production registers none
    assert config["LETHE_ENV"] == "production"
    secret_names = {"LETHE_DATABASE_URL", "LETHE_SUBJECT_KEY_SECRET", "LETHE_CALLBACK_HMAC_SECRET"}
    assert secret_names <= set(secrets["lethe-secrets"]["stringData"]) and not secret_names & set(config)
    key_files = set(secrets["lethe-signing-keys"]["stringData"])
    assert {Path(config[k]).name for k in config if k.endswith("_PATH")} == key_files
    for name, spec in pod_specs().items():
        volumes = spec.get("volumes", [])
        claims = {v["persistentVolumeClaim"]["claimName"] for v in volumes if "persistentVolumeClaim" in v}
        assert claims <= set(by_kind("PersistentVolumeClaim")), name
        assert {v["secret"]["secretName"] for v in volumes if "secret" in v} <= set(secrets), name
        for c in containers(spec):
            refs = c.get("envFrom", [])
            assert {r["configMapRef"]["name"] for r in refs if "configMapRef" in r} == {"lethe-config"}, name
            assert {r["secretRef"]["name"] for r in refs if "secretRef" in r} == {"lethe-secrets"}, name
            assert {e["name"] for e in c.get("env", [])} <= fields, name
