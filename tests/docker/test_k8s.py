"""KubeRay manifests: valid against the real CRD schemas, and consistent with what they run."""
import pathlib
import importlib.util
import shlex

import jsonschema
import pytest
import yaml

import conf

REPO = pathlib.Path(__file__).resolve().parents[2]
K8S = REPO / "docker" / "k8s"
SHARED_CRDS = REPO.parent / "shared" / "kuberay"  # the operator's own CRD files, where a checkout has them
_spec = importlib.util.spec_from_file_location("kuberay_schemas", K8S / "schemas" / "extract.py")
extract = importlib.util.module_from_spec(_spec)  # docker/k8s/schemas/extract.py: the schemas kept in the repo
_spec.loader.exec_module(extract)


def _schema(kind: str) -> dict:
    return extract.load(kind)


def test_the_kept_schemas_are_the_operators_v1_schemas():
    if not SHARED_CRDS.exists():
        pytest.skip(f"{SHARED_CRDS} (the KubeRay CRD files) not available to compare with")
    for kind, name in extract.CRDS.items():
        kept = extract.load(kind)
        assert kept == extract.v1_schema(SHARED_CRDS / name)
        assert kept["properties"]["spec"]["type"] == "object" and "description" not in kept


def _manifest(name: str) -> dict:
    return yaml.safe_load((K8S / name).read_text())


def _image() -> str:
    env = dict(l.split("=", 1) for l in (REPO / "docker" / "versions.env").read_text().splitlines() if l and l[0] != "#")
    return env["IMAGE"]


def _cluster_spec(doc: dict) -> dict:
    return doc["spec"]["rayClusterSpec"] if doc["kind"] == "RayJob" else doc["spec"]


@pytest.mark.parametrize("name,kind", [("rayjob.yaml", "RayJob"), ("raycluster.yaml", "RayCluster")])
def test_manifest_validates_against_the_kuberay_crd(name, kind):
    doc = _manifest(name)
    assert doc["apiVersion"] == "ray.io/v1" and doc["kind"] == kind
    jsonschema.validate(doc, _schema(kind))
    broken = yaml.safe_load((K8S / name).read_text())
    _cluster_spec(broken)["headGroupSpec"]["rayStartParams"] = ["not", "a", "map"]
    with pytest.raises(jsonschema.ValidationError):  # the schema really constrains the manifest
        jsonschema.validate(broken, _schema(kind))


@pytest.mark.parametrize("name", ["rayjob.yaml", "raycluster.yaml"])
def test_images_ports_storage_and_metrics(name):
    spec = _cluster_spec(_manifest(name))
    pods = [spec["headGroupSpec"]["template"]] + [g["template"] for g in spec["workerGroupSpecs"]]
    claims = {d["metadata"]["name"] for d in yaml.safe_load_all((K8S / "storage.yaml").read_text())}
    for pod in pods:
        c = pod["spec"]["containers"][0]
        assert c["image"] == _image()
        assert {"name": "metrics", "containerPort": 8080} in [{k: p[k] for k in ("name", "containerPort")} for p in c["ports"]]
        assert any(m["mountPath"] == "/checkpoints" for m in c["volumeMounts"])
        used = {v["persistentVolumeClaim"]["claimName"] for v in pod["spec"]["volumes"] if "persistentVolumeClaim" in v}
        assert used <= claims and "vlm-r1-checkpoints" in used
        assert pod["spec"]["securityContext"]["runAsUser"] == 1000
    head = spec["headGroupSpec"]
    assert head["rayStartParams"]["metrics-export-port"] == "8080"
    assert {p["containerPort"] for p in head["template"]["spec"]["containers"][0]["ports"]} >= {6379, 8265, 10001}


def test_rayjob_entrypoint_is_a_valid_run_that_fits_the_gpus():
    doc = _manifest("rayjob.yaml")
    argv = shlex.split(doc["spec"]["entrypoint"])
    assert argv[0] == "python" and argv[1].endswith("orchestrator.py") and "conf=vlm_r1_ovd" in argv
    cfg = conf.load(argv[2:])  # every override is a real, well-typed key
    assert cfg.cluster.address == "auto" and cfg.trainer.output_dir.startswith("/checkpoints/")
    needed = cfg.rollout.num_engines * cfg.rollout.devices_per_engine + cfg.learner.world_size * cfg.learner.gpus_per_rank
    groups = doc["spec"]["rayClusterSpec"]["workerGroupSpecs"]
    have = sum(int(g["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"]) * g["replicas"] for g in groups)
    assert needed == have == 8  # VLM-R1's recipe: 8 GPUs, all used
    assert (cfg.trainer.prompts_per_step * cfg.rollout.num_generations) % cfg.learner.world_size == 0
    assert doc["spec"]["rayClusterSpec"]["rayVersion"] == "2.60.0"


def test_podmonitor_scrapes_the_metrics_port_of_every_ray_pod():
    mon = _manifest("podmonitor.yaml")
    assert (mon["apiVersion"], mon["kind"]) == ("monitoring.coreos.com/v1", "PodMonitor")
    assert mon["spec"]["selector"]["matchLabels"] == {"ray.io/is-ray-node": "yes"}  # KubeRay labels every Ray pod so
    (ep,) = mon["spec"]["podMetricsEndpoints"]
    assert ep["path"] == "/metrics"
    for name in ("rayjob.yaml", "raycluster.yaml"):
        spec = _cluster_spec(_manifest(name))
        for group in [spec["headGroupSpec"]] + spec["workerGroupSpecs"]:
            ports = {p["name"]: p["containerPort"] for p in group["template"]["spec"]["containers"][0]["ports"]}
            assert str(ports[ep["port"]]) == group["rayStartParams"]["metrics-export-port"]  # Ray exports there


@pytest.mark.parametrize("name", ["rayjob.yaml", "raycluster.yaml"])
def test_closed_by_default_token_auth_and_hardened_pods(name):
    doc = _manifest(name)
    spec = _cluster_spec(doc)
    assert spec["authOptions"] == {"mode": "token"}  # the operator makes the token and hands it to every container
    pods = [spec["headGroupSpec"]["template"]] + [g["template"] for g in spec["workerGroupSpecs"]]
    for pod in pods:
        sc = pod["spec"]["securityContext"]
        assert sc["runAsNonRoot"] is True and sc["seccompProfile"] == {"type": "RuntimeDefault"}
        for c in pod["spec"]["containers"]:
            assert c["securityContext"] == {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}}
            assert c["resources"]["limits"]["ephemeral-storage"] and c["resources"]["requests"]["ephemeral-storage"]
            assert all(e.get("name") != "RAY_AUTH_MODE" for e in c.get("env", []))  # nothing turns auth off
    assert "RAY_AUTH_MODE" not in (K8S / name).read_text().replace("RAY_AUTH_MODE / RAY_AUTH_TOKEN", "")


def test_the_network_policy_admits_only_ray_pods_the_submitter_the_operator_and_prometheus():
    pol = _manifest("networkpolicy.yaml")
    assert (pol["apiVersion"], pol["kind"]) == ("networking.k8s.io/v1", "NetworkPolicy")
    ray_pods = {"ray.io/is-ray-node": "yes"}
    assert pol["spec"]["podSelector"] == {"matchLabels": ray_pods} and pol["spec"]["policyTypes"] == ["Ingress"]
    rules = pol["spec"]["ingress"]
    open_rules = [r for r in rules if "ports" not in r]  # a rule without ports admits every port: Ray pods only
    assert open_rules == [{"from": [{"podSelector": {"matchLabels": ray_pods}}]}]
    ports = {p["port"] for r in rules for p in r.get("ports", [])}
    assert ports == {8265, 8080}  # the job API (submitter, operator) and the metrics (Prometheus), nothing else
    monitoring = [r for r in rules if r.get("ports") == [{"protocol": "TCP", "port": 8080}]]
    assert monitoring[0]["from"] == [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}]
    # the policy selects the pods the manifests make: KubeRay labels every Ray pod so (as the PodMonitor relies on)
    assert _manifest("podmonitor.yaml")["spec"]["selector"]["matchLabels"] == ray_pods
