"""Kubernetes manifests: validated against the Kubernetes API schemas (kubernetes-validate, strict: an
unknown field is an error), and checked against each other (selectors, ports, names).

ServiceMonitor is a Prometheus Operator CRD, and kubernetes-validate has no schema for CRDs: its
metadata and selector are validated against the core ObjectMeta/LabelSelector schemas, the rest
structurally. Kustomization files are kustomize's, not API objects: checked structurally."""
from __future__ import annotations

import copy
import json
from importlib import resources

import jsonschema
import kubernetes_validate
import pytest

from clip_triton import contract
from deploy_support import K8S, load_yaml, load_yaml_documents

# The oldest Kubernetes we support (autoscaling/v2 behavior, policy/v1 PDB are GA there) and the newest
# the validator knows: a field removed or renamed in between fails one of the two.
KUBERNETES_VERSIONS = ["1.27.0", kubernetes_validate.utils.latest_version()]
NOT_API_OBJECTS = {"Kustomization"}
CRDS = {"ServiceMonitor"}  # no schema in kubernetes-validate: test_servicemonitor_is_well_formed


def manifests() -> list[tuple[str, dict]]:
    found = []
    for path in sorted(K8S.glob("*.yaml")):
        found += [(path.name, doc) for doc in load_yaml_documents(path)]
    return found


def objects(kind: str) -> list[dict]:
    return [doc for _, doc in manifests() if doc["kind"] == kind]


def one(kind: str, name: str | None = None) -> dict:
    (found,) = [doc for doc in objects(kind) if name is None or doc["metadata"]["name"] == name]
    return found


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("name,manifest", [(n, m) for n, m in manifests() if m["kind"] not in NOT_API_OBJECTS | CRDS],
                         ids=lambda v: v if isinstance(v, str) else v["kind"])
def test_manifest_validates_against_the_kubernetes_schema(name: str, manifest: dict, version: str):
    kubernetes_validate.validate(manifest, version, strict=True)


def test_only_known_kinds_escape_schema_validation():
    kinds = {m["kind"] for _, m in manifests()}
    assert kinds & (NOT_API_OBJECTS | CRDS) == {"Kustomization", "ServiceMonitor"}


def test_strict_validation_rejects_a_misspelt_field():
    broken = copy.deepcopy(one("Deployment"))
    broken["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBERNETES_VERSIONS[0], strict=True)


def _core_definitions() -> dict:
    version = KUBERNETES_VERSIONS[-1].rsplit(".", 1)[0]
    files = resources.files("kubernetes_validate").joinpath("kubernetes-json-schema", f"v{version}.0-local-strict")
    return json.loads(files.joinpath("_definitions.json").read_text())


def _validate_definition(instance: dict, definition: str) -> None:
    definitions = _core_definitions()["$defs"]
    schema = {"$defs": definitions, "$ref": f"#/$defs/{definition}"}
    jsonschema.Draft202012Validator(schema).validate(instance)


def test_servicemonitor_is_well_formed():
    monitor = one("ServiceMonitor")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    _validate_definition(monitor["metadata"], "io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta")
    _validate_definition(monitor["spec"]["selector"], "io.k8s.apimachinery.pkg.apis.meta.v1.LabelSelector")
    assert set(monitor["spec"]) <= {"selector", "namespaceSelector", "endpoints", "jobLabel"}
    for endpoint in monitor["spec"]["endpoints"]:
        assert set(endpoint) <= {"port", "path", "interval", "scrapeTimeout", "scheme", "relabelings"}
        assert endpoint["path"] == "/metrics"
    # It selects exactly one Service (the headless one would scrape every pod twice), by a port name.
    selected = [s for s in objects("Service")
                if monitor["spec"]["selector"]["matchLabels"].items() <= s["metadata"]["labels"].items()]
    assert [s["metadata"]["name"] for s in selected] == ["clip-triton"]
    port_names = {p["name"] for p in selected[0]["spec"]["ports"]}
    assert {e["port"] for e in monitor["spec"]["endpoints"]} <= port_names
    assert monitor["spec"]["namespaceSelector"]["matchNames"] == [monitor["metadata"]["namespace"]]


def test_kustomization_lists_every_manifest():
    kustomization = load_yaml(K8S / "kustomization.yaml")
    listed = set(kustomization["resources"])
    present = {path.name for path in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert listed == present


def _pod_spec() -> dict:
    return one("Deployment")["spec"]["template"]["spec"]


def _triton() -> dict:
    (container,) = [c for c in _pod_spec()["containers"] if c["name"] == "triton"]
    return container


def test_every_object_lives_in_one_namespace():
    namespace = one("Namespace")["metadata"]["name"]
    for _, doc in manifests():
        if doc["kind"] not in NOT_API_OBJECTS | {"Namespace"}:
            assert doc["metadata"]["namespace"] == namespace, doc["metadata"]["name"]


def test_deployment_requests_one_gpu_and_sets_requests_and_limits():
    resources_ = _triton()["resources"]
    assert resources_["requests"]["nvidia.com/gpu"] == resources_["limits"]["nvidia.com/gpu"] == 1
    assert {"cpu", "memory"} <= set(resources_["requests"]) and "memory" in resources_["limits"]
    for container in _pod_spec()["initContainers"]:
        assert {"cpu", "memory"} <= set(container["resources"]["requests"])


def test_probes_use_tritons_health_endpoints_on_a_declared_port():
    triton = _triton()
    port_names = {p["name"] for p in triton["ports"]}
    assert {p["containerPort"] for p in triton["ports"]} == {8000, 8001, 8002}
    assert triton["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert triton["startupProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert triton["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
    for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
        assert triton[probe]["httpGet"]["port"] in port_names


def test_model_repository_is_built_by_the_init_container_and_served_read_only():
    spec = _pod_spec()
    (builder,) = spec["initContainers"]
    volumes = {v["name"]: v for v in spec["volumes"]}
    builder_mounts = {m["name"]: m for m in builder["volumeMounts"]}
    triton_mounts = {m["name"]: m for m in _triton()["volumeMounts"]}
    assert "emptyDir" in volumes["model-repository"]
    assert builder_mounts["model-repository"]["mountPath"] == "/models"
    assert triton_mounts["model-repository"] == {"name": "model-repository", "mountPath": "/models", "readOnly": True}
    env = {e["name"]: e.get("value") for e in builder["env"]}
    assert env["REPOSITORY"] == "/models" and env["REQUIRE_CHECKPOINT"] == "1"
    assert env["CHECKPOINT"].startswith(builder_mounts["checkpoints"]["mountPath"] + "/")
    claim = volumes["checkpoints"]["persistentVolumeClaim"]["claimName"]
    assert one("PersistentVolumeClaim", claim)
    assert volumes["dshm"]["emptyDir"]["medium"] == "Memory" and triton_mounts["dshm"]["mountPath"] == "/dev/shm"
    for container in [builder, _triton()]:  # every mount names a volume of the pod
        assert {m["name"] for m in container["volumeMounts"]} <= set(volumes)


def test_admin_key_comes_from_a_secret_file_and_drain_fits_the_grace_period():
    spec, triton = _pod_spec(), _triton()
    env = {e["name"]: e.get("value") for e in triton["env"]}
    secret = {v["name"]: v for v in spec["volumes"]}["admin-key"]["secret"]
    mount = {m["name"]: m for m in triton["volumeMounts"]}["admin-key"]
    assert env["CLIP_TRITON_ADMIN_KEY_FILE"] == f"{mount['mountPath']}/{secret['items'][0]['path']}"
    assert secret["secretName"] == "clip-triton-admin" and secret["items"][0]["key"] == "admin-key"
    assert spec["terminationGracePeriodSeconds"] > int(env["EXIT_TIMEOUT_SECS"])


def test_services_select_the_pods_and_name_their_ports():
    pod_labels = one("Deployment")["spec"]["template"]["metadata"]["labels"]
    container_ports = {p["name"] for p in _triton()["ports"]}
    for service in objects("Service"):
        assert service["spec"]["selector"].items() <= pod_labels.items()
        assert {p["targetPort"] for p in service["spec"]["ports"]} <= container_ports
    assert one("Service", "clip-triton-headless")["spec"]["clusterIP"] == "None"
    assert {p["name"] for p in one("Service", "clip-triton")["spec"]["ports"]} == {"http", "grpc", "metrics"}


def test_pdb_and_hpa_protect_and_scale_the_deployment():
    deployment = one("Deployment")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    pdb, hpa = one("PodDisruptionBudget"), one("HorizontalPodAutoscaler")
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment",
                                             "name": deployment["metadata"]["name"]}
    assert hpa["spec"]["minReplicas"] > pdb["spec"]["minAvailable"]  # a drain can always proceed


def test_hpa_scales_on_the_adapters_queue_time_metric_with_a_cpu_fallback():
    metrics = one("HorizontalPodAutoscaler")["spec"]["metrics"]
    (pods,) = [m["pods"] for m in metrics if m["type"] == "Pods"]
    (cpu,) = [m["resource"] for m in metrics if m["type"] == "Resource"]
    adapter = load_yaml(K8S / "prometheus-adapter" / "values.yaml")
    assert pods["metric"]["name"] in [rule["name"]["as"] for rule in adapter["rules"]["custom"]]
    assert cpu["name"] == "cpu" and cpu["target"]["type"] == "Utilization"


def test_adapter_rule_maps_prometheus_labels_to_pods():
    (rule,) = load_yaml(K8S / "prometheus-adapter" / "values.yaml")["rules"]["custom"]
    assert rule["resources"]["overrides"] == {"namespace": {"resource": "namespace"}, "pod": {"resource": "pod"}}
    for model in (contract.PREPROCESS_MODEL, contract.VISUAL_MODEL, contract.ENSEMBLE_MODEL):
        assert model in rule["metricsQuery"]


def _shared_cluster_deployment() -> dict:
    """../deployment.yaml with the shared-cluster patch applied the way a strategic merge does it."""
    base = copy.deepcopy(one("Deployment"))
    patch = load_yaml(K8S / "shared-cluster" / "deployment-patch.yaml")["spec"]["template"]["spec"]
    spec = base["spec"]["template"]["spec"]
    for key in ("initContainers", "containers"):
        by_name = {c["name"]: c for c in spec[key]}
        for patched in patch.get(key, []):
            target = by_name[patched["name"]]  # a patch naming no existing container would add one: a bug
            for field, value in patched.items():
                target[field] = target.get(field, []) + value if isinstance(value, list) else value
    spec["volumes"] += patch["volumes"]
    return base


def test_shared_cluster_overlay_produces_a_valid_deployment():
    deployment = _shared_cluster_deployment()
    kubernetes_validate.validate(deployment, KUBERNETES_VERSIONS[-1], strict=True)
    kustomization = load_yaml(K8S / "shared-cluster" / "kustomization.yaml")
    assert kustomization["resources"] == ["../"]
    (generator,) = kustomization["configMapGenerator"]
    volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
    assert volumes["config-overrides"]["configMap"]["name"] == generator["name"]
    for file in generator["files"]:
        assert (K8S / "shared-cluster" / file).is_file()


def test_shared_cluster_flags_are_documented_and_known_to_the_pinned_triton():
    from deploy_support import flag_name, tritonserver_flags

    (triton,) = load_yaml(K8S / "shared-cluster" / "deployment-patch.yaml")["spec"]["template"]["spec"]["containers"]
    doc = (K8S / "shared-cluster" / "SHARED_CLUSTER.md").read_text()
    for argument in triton["args"]:
        assert argument in doc
        assert flag_name(argument) in tritonserver_flags()
