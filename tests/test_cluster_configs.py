"""Offline validation of cluster_configs/: every file is checked the way the tool that consumes it would.

* ``ray up`` YAMLs go through Ray's own ``prepare_config`` + ``validate_config`` (what ``ray up`` runs before it
  calls a cloud: defaults merged, JSON schema, head type and worker bounds).
* AWS ``node_config`` blocks go to EC2 RunInstances, so they are validated against botocore's model of it.
* KubeRay manifests are validated against a strict schema of the fields we use (an unknown or mistyped field
  fails, as ``kubeconform -strict`` would), and the RayCluster specs go through Ray's own KubeRay autoscaler
  translation, which tells us what resources each group advertises.
* Policy: pinned Ray/raylit versions that match this checkout, every command list written out, token auth,
  dashboards off the public internet, no credentials.

Each validator is also shown a broken copy, so a check that silently accepts everything would fail here.
"""

from __future__ import annotations

import copy
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

import raylit

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "cluster_configs"
RAY_UP = sorted(CONFIGS.glob("*.yaml"))
KUBERAY = sorted((CONFIGS / "kuberay").glob("*.yaml"))
AWS = [p for p in RAY_UP if yaml.safe_load(p.read_text())["provider"]["type"] == "aws"]
COMMAND_LISTS = ("initialization_commands", "setup_commands", "head_setup_commands", "worker_setup_commands",
                 "head_start_ray_commands", "worker_start_ray_commands")


def _kuberay_crd_dir() -> Path | None:
    """KubeRay's CRDs: $RAYLIT_KUBERAY_CRD_DIR, else the copy in shared/ beside the project root
    (``../shared/kuberay-crds``; a CI clone has shared/ as a sibling too) or inside it."""
    if os.environ.get("RAYLIT_KUBERAY_CRD_DIR"):
        return Path(os.environ["RAYLIT_KUBERAY_CRD_DIR"])
    for candidate in (ROOT.parent / "shared" / "kuberay-crds", ROOT / "shared" / "kuberay-crds"):
        if (candidate / "ray.io_rayjobs.yaml").is_file():
            return candidate
    return None


KUBERAY_CRDS = _kuberay_crd_dir()


def _ray_version() -> str:
    from importlib.metadata import version

    return version("ray")


def load(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


def prepared(cfg: dict) -> dict:
    """What `ray up` validates: the config after Ray merged its provider defaults (private API; Ray is pinned)."""
    from ray.autoscaler._private.util import prepare_config, validate_config

    out = prepare_config(copy.deepcopy(cfg))
    validate_config(out)
    return out


def ids(paths: list[Path]) -> list[str]:
    return [p.relative_to(CONFIGS).as_posix() for p in paths]


def test_every_target_has_a_config():
    names = {p.name for p in RAY_UP} | {p.name for p in KUBERAY}
    assert {"aws-gpu.yaml", "aws-gpu-efa.yaml", "aws-cpu.yaml", "gcp-gpu.yaml", "onprem.yaml",
            "raycluster-gpu.yaml", "rayjob.yaml"} <= names
    providers = {load(p)["provider"]["type"] for p in RAY_UP}
    assert providers == {"aws", "gcp", "local"}


# --------------------------------------------------------------------------------------------------------------
# ray up YAMLs
# --------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("path", RAY_UP, ids=ids(RAY_UP))
def test_ray_up_config_passes_rays_validation(path):
    cfg = prepared(load(path))
    assert cfg["head_node_type"] in cfg["available_node_types"]


@pytest.mark.parametrize("path", RAY_UP, ids=ids(RAY_UP))
def test_ray_up_config_writes_every_command_list(path):
    """An omitted list is filled from Ray's defaults.yaml (on AWS: a nightly Ray wheel and a boto3 install)."""
    cfg = load(path)
    for key in COMMAND_LISTS:
        assert isinstance(cfg.get(key), list), f"{path.name}: write `{key}` out, even as []"
    final = prepared(cfg)
    everything = " ".join(c for key in COMMAND_LISTS for c in final[key])
    assert "ray-wheels" not in everything and "nightly" not in everything and "dev0" not in everything


@pytest.mark.parametrize("path", RAY_UP, ids=ids(RAY_UP))
def test_ray_up_config_pins_matching_versions(path):
    cfg = load(path)
    setup = "\n".join(cfg["setup_commands"])
    ray_version = _ray_version()
    assert re.search(r'"ray\[[a-z,]*default[a-z,]*\]==' + re.escape(ray_version) + '"', setup), \
        f"{path.name}: setup_commands must install ray[default,...]=={ray_version} (the job server needs [default])"
    assert f"raylit-{raylit.__version__}-py3-none-any.whl" in setup, f"{path.name}: raylit must be pinned"
    assert re.search(r'"torch==[0-9.]+"', setup)
    for key in ("image", "head_image", "worker_image"):
        image = cfg.get("docker", {}).get(key)
        if image:
            assert image.startswith(f"rayproject/ray:{ray_version}-"), f"{path.name}: docker.{key}={image}"
    # the wheel the setup installs is the one file_mounts copies
    assert cfg["file_mounts"].get("~/raylit-dist") == "./dist"


@pytest.mark.parametrize("path", RAY_UP, ids=ids(RAY_UP))
def test_ray_up_config_auth_and_ports(path):
    cfg = load(path)
    starts = cfg["head_start_ray_commands"] + cfg["worker_start_ray_commands"]
    ray_starts = [c for c in starts if "ray start" in c]
    assert len(ray_starts) == 2
    for cmd in ray_starts:
        assert "RAY_AUTH_MODE=token" in cmd, f"{path.name}: every `ray start` needs token auth: {cmd}"
    assert cfg["file_mounts"].get("~/.ray/auth_token") == "~/.ray/auth_token"
    head = " ".join(cfg["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in head
    assert "0.0.0.0" not in yaml.safe_dump(cfg)
    # Ray's own security group rules open SSH only; we add no public ingress of our own
    assert not cfg["provider"].get("security_group", {}).get("IpPermissions")
    if cfg["provider"]["type"] == "local":
        # on shared machines `ray stop` kills other people's Ray
        assert not any(re.search(r"\bray stop\b", c) for c in starts)


@pytest.mark.parametrize("path", [p for p in RAY_UP if load(p)["provider"]["type"] != "local"],
                         ids=ids([p for p in RAY_UP if load(p)["provider"]["type"] != "local"]))
def test_cloud_head_runs_no_training_and_workers_are_spot(path):
    cfg = load(path)
    types = cfg["available_node_types"]
    head = types[cfg["head_node_type"]]
    assert head["resources"].get("CPU") == 0
    workers = {k: v for k, v in types.items() if k != cfg["head_node_type"]}
    assert workers
    assert cfg["max_workers"] >= sum(w.get("min_workers", 0) for w in workers.values())
    for name, t in workers.items():
        nc = t["node_config"]
        assert "max_workers" in t and t["max_workers"] >= 1
        if cfg["provider"]["type"] == "aws":
            assert nc["InstanceMarketOptions"]["MarketType"] == "spot", name
            assert "InstanceMarketOptions" not in head["node_config"]
            assert nc["BlockDeviceMappings"][0]["Ebs"]["VolumeSize"] >= 50
        else:
            assert nc["scheduling"]["provisioningModel"] == "SPOT", name
            assert "scheduling" not in head["node_config"]
            assert t["resources"]["GPU"] >= 1, "GCP fills in no resources: GPUs must be declared"
    assert cfg["provider"].get("cache_stopped_nodes") is False  # idle spot nodes are terminated, not stopped


def test_gpu_configs_use_gpu_machines():
    gpu_types = {p.name: [t["node_config"].get("InstanceType") or t["node_config"].get("machineType")
                          for k, t in load(p)["available_node_types"].items() if k != load(p)["head_node_type"]]
                 for p in RAY_UP if "gpu" in p.name}
    assert gpu_types == {"aws-gpu-efa.yaml": ["p4d.24xlarge"], "aws-gpu.yaml": ["g5.xlarge", "g5.12xlarge"],
                         "gcp-gpu.yaml": ["g2-standard-12", "a2-highgpu-8g"]}


def test_efa_config_has_one_efa_interface_per_card_and_nccl_settings():
    cfg = load(CONFIGS / "aws-gpu-efa.yaml")
    worker = cfg["available_node_types"]["gpu_a100_x8_efa"]["node_config"]
    nics = worker["NetworkInterfaces"]
    assert [n["NetworkCardIndex"] for n in nics] == [0, 1, 2, 3]  # p4d.24xlarge has 4 network cards
    assert {n["InterfaceType"] for n in nics} == {"efa"}
    assert len({n["SubnetId"] for n in nics}) == 1  # EFA traffic stays in one subnet
    assert worker["Placement"]["GroupName"]
    assert cfg["provider"]["use_internal_ips"] is True
    start = " ".join(cfg["worker_start_ray_commands"])
    for var in ("FI_PROVIDER=efa", "FI_EFA_USE_DEVICE_RDMA=1", "FI_EFA_FORK_SAFE=1", "NCCL_SOCKET_IFNAME="):
        assert var in start


def _run_instances_errors(node_config: dict) -> str:
    import botocore.session
    from botocore.validate import ParamValidator

    shape = botocore.session.get_session().get_service_model("ec2").operation_model("RunInstances").input_shape
    # SubnetIds is Ray's own key (Ray picks one SubnetId from it); the rest goes to RunInstances as is
    params = {k: v for k, v in node_config.items() if k != "SubnetIds"}
    report = ParamValidator().validate(dict(params, MinCount=1, MaxCount=1), shape)
    return report.generate_report() if report.has_errors() else ""


AWS_NODE_TYPES = [(p, name) for p in AWS for name in load(p)["available_node_types"]]


@pytest.mark.parametrize("path,node_type", AWS_NODE_TYPES,
                         ids=[f"{p.name}:{n}" for p, n in AWS_NODE_TYPES])
def test_aws_node_config_matches_ec2_run_instances(path, node_type):
    pytest.importorskip("botocore")
    node_config = load(path)["available_node_types"][node_type]["node_config"]
    assert _run_instances_errors(node_config) == ""


def test_validators_reject_broken_configs():
    """The checks above bite: each broken copy is refused."""
    from ray.autoscaler._private.util import prepare_config, validate_config

    good = load(CONFIGS / "aws-gpu.yaml")

    def refused(mutate) -> bool:
        cfg = copy.deepcopy(good)
        mutate(cfg)
        try:
            validate_config(prepare_config(cfg))
        except Exception:
            return True
        return False

    assert refused(lambda c: c.update(max_worker=3))  # misspelt top-level key
    assert refused(lambda c: c["available_node_types"]["gpu_a10g_x1"].update(min_worker=1))
    assert refused(lambda c: c["available_node_types"]["head"].update(resources={"CPU": 0.5}))
    assert refused(lambda c: c.update(head_node_type="nope"))
    assert refused(lambda c: c["docker"].update(imagee="x"))
    assert refused(lambda c: c["available_node_types"]["gpu_a10g_x1"].update(min_workers=9))  # > max_workers

    pytest.importorskip("botocore")
    nc = copy.deepcopy(good["available_node_types"]["gpu_a10g_x1"]["node_config"])
    nc["InstanceTyp"] = nc.pop("InstanceType")
    assert "InstanceTyp" in _run_instances_errors(nc)
    nc = copy.deepcopy(good["available_node_types"]["gpu_a10g_x1"]["node_config"])
    nc["BlockDeviceMappings"][0]["Ebs"]["VolumeSize"] = "300"
    assert "VolumeSize" in _run_instances_errors(nc)


# --------------------------------------------------------------------------------------------------------------
# KubeRay manifests
# --------------------------------------------------------------------------------------------------------------
def _obj(properties: dict, required: tuple = ()) -> dict:
    return {"type": "object", "properties": properties, "required": list(required), "additionalProperties": False}


_STR = {"type": "string"}
_INT = {"type": "integer"}
_BOOL = {"type": "boolean"}
_STR_MAP = {"type": "object", "additionalProperties": {"type": "string"}}
_QUANTITY_MAP = {"type": "object", "additionalProperties": {"anyOf": [{"type": "string"}, {"type": "integer"}]}}
_METADATA = _obj({"name": _STR, "namespace": _STR, "labels": _STR_MAP, "annotations": _STR_MAP}, ("name",))
_CONTAINER = _obj({
    "name": _STR, "image": _STR,
    "imagePullPolicy": {"enum": ["Always", "IfNotPresent", "Never"]},
    "command": {"type": "array", "items": _STR}, "args": {"type": "array", "items": _STR},
    "env": {"type": "array", "items": _obj({
        "name": _STR, "value": _STR,
        "valueFrom": _obj({"secretKeyRef": _obj({"name": _STR, "key": _STR, "optional": _BOOL}, ("key",)),
                           "fieldRef": _obj({"fieldPath": _STR, "apiVersion": _STR}, ("fieldPath",))})},
        ("name",))},
    "ports": {"type": "array", "items": _obj({"containerPort": _INT, "name": _STR,
                                              "protocol": {"enum": ["TCP", "UDP", "SCTP"]}}, ("containerPort",))},
    "resources": _obj({"limits": _QUANTITY_MAP, "requests": _QUANTITY_MAP}),
    "volumeMounts": {"type": "array", "items": _obj({"name": _STR, "mountPath": _STR, "readOnly": _BOOL,
                                                     "subPath": _STR}, ("name", "mountPath"))},
}, ("name", "image"))
_POD_TEMPLATE = _obj({
    "metadata": _obj({"labels": _STR_MAP, "annotations": _STR_MAP}),
    "spec": _obj({
        "containers": {"type": "array", "minItems": 1, "items": _CONTAINER},
        "volumes": {"type": "array", "items": _obj({
            "name": _STR,
            "emptyDir": _obj({"medium": {"enum": ["", "Memory"]},
                              "sizeLimit": {"anyOf": [{"type": "string"}, {"type": "integer"}]}}),
            "configMap": _obj({"name": _STR, "items": {"type": "array", "items": _obj(
                {"key": _STR, "path": _STR}, ("key", "path"))}}, ("name",)),
        }, ("name",))},
        "tolerations": {"type": "array", "items": _obj({
            "key": _STR, "operator": {"enum": ["Exists", "Equal"]}, "value": _STR,
            "effect": {"enum": ["NoSchedule", "PreferNoSchedule", "NoExecute"]}, "tolerationSeconds": _INT})},
        "nodeSelector": _STR_MAP,
        "serviceAccountName": _STR,
    }, ("containers",)),
}, ("spec",))
_RAY_CLUSTER_SPEC = _obj({
    "rayVersion": _STR,
    "authOptions": _obj({"mode": {"enum": ["disabled", "token"]}, "secretName": _STR}),
    "enableInTreeAutoscaling": _BOOL,
    "autoscalerOptions": _obj({"upscalingMode": {"enum": ["Default", "Aggressive", "Conservative"]},
                               "idleTimeoutSeconds": _INT, "version": {"enum": ["v1", "v2"]}, "image": _STR}),
    "headGroupSpec": _obj({"serviceType": {"enum": ["ClusterIP", "NodePort", "LoadBalancer"]},
                           "enableIngress": _BOOL, "rayStartParams": _STR_MAP, "template": _POD_TEMPLATE},
                          ("template",)),
    "workerGroupSpecs": {"type": "array", "items": _obj({
        "groupName": _STR, "replicas": _INT, "minReplicas": _INT, "maxReplicas": _INT,
        "idleTimeoutSeconds": _INT, "rayStartParams": _STR_MAP, "template": _POD_TEMPLATE, "suspend": _BOOL,
    }, ("groupName", "minReplicas", "maxReplicas", "template"))},
}, ("headGroupSpec",))
SCHEMAS = {
    "RayCluster": _obj({"apiVersion": {"const": "ray.io/v1"}, "kind": {"const": "RayCluster"},
                        "metadata": _METADATA, "spec": _RAY_CLUSTER_SPEC}, ("apiVersion", "kind", "metadata", "spec")),
    "RayJob": _obj({"apiVersion": {"const": "ray.io/v1"}, "kind": {"const": "RayJob"}, "metadata": _METADATA,
                    "spec": _obj({
                        "entrypoint": _STR, "runtimeEnvYAML": _STR,
                        "submissionMode": {"enum": ["K8sJobMode", "HTTPMode", "SidecarMode", "InteractiveMode"]},
                        "shutdownAfterJobFinishes": _BOOL, "ttlSecondsAfterFinished": _INT,
                        "activeDeadlineSeconds": _INT, "backoffLimit": _INT, "rayClusterSpec": _RAY_CLUSTER_SPEC,
                        "clusterSelector": _STR_MAP, "jobId": _STR, "suspend": _BOOL,
                        "entrypointNumCpus": {"type": "number"}, "entrypointNumGpus": {"type": "number"},
                    }, ("entrypoint",))},
                   ("apiVersion", "kind", "metadata", "spec")),
    "ConfigMap": _obj({"apiVersion": {"const": "v1"}, "kind": {"const": "ConfigMap"}, "metadata": _METADATA,
                       "data": _STR_MAP}, ("apiVersion", "kind", "metadata")),
}


def kube_docs() -> list[tuple[Path, dict]]:
    return [(p, d) for p in KUBERAY for d in yaml.safe_load_all(p.read_text()) if d]


def schema_errors(doc: dict) -> list[str]:
    import jsonschema

    validator = jsonschema.Draft7Validator(SCHEMAS[doc["kind"]])
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(doc)]


def ray_cluster_specs() -> list[tuple[str, dict]]:
    out = []
    for path, doc in kube_docs():
        if doc["kind"] == "RayCluster":
            out.append((path.name, doc["spec"]))
        elif doc["kind"] == "RayJob":
            out.append((path.name, doc["spec"]["rayClusterSpec"]))
    return out


@pytest.mark.parametrize("index", range(len(kube_docs())),
                         ids=[f"{p.name}:{d['kind']}" for p, d in kube_docs()])
def test_kuberay_manifest_matches_strict_schema(index):
    _, doc = kube_docs()[index]
    assert schema_errors(doc) == []


def test_kuberay_schema_rejects_mistakes():
    _, cluster = next((p, d) for p, d in kube_docs() if d["kind"] == "RayCluster")
    _, job = next((p, d) for p, d in kube_docs() if d["kind"] == "RayJob")

    def errors(doc, mutate):
        doc = copy.deepcopy(doc)
        mutate(doc)
        return schema_errors(doc)

    group = lambda d: d["spec"]["workerGroupSpecs"][0]  # noqa: E731
    assert errors(cluster, lambda d: group(d).update(maxReplica=group(d).pop("maxReplicas")))
    assert errors(cluster, lambda d: d["spec"]["headGroupSpec"]["rayStartParams"].update({"num-cpus": 0}))
    assert errors(cluster, lambda d: group(d)["template"]["spec"]["containers"][0].pop("name"))
    assert errors(cluster, lambda d: group(d)["template"]["spec"]["containers"][0].update(imagePullPolicyy="x"))
    assert errors(job, lambda d: d["spec"].update(shutdownAfterJobFinish=True))
    assert errors(job, lambda d: d["spec"].update(ttlSecondsAfterFinished="600"))


@pytest.mark.parametrize("name,spec", ray_cluster_specs(), ids=[n for n, _ in ray_cluster_specs()])
def test_kuberay_cluster_resources_as_ray_sees_them(name, spec):
    """Ray's KubeRay autoscaler derives each group's resources from the pod spec; check what it gets."""
    from ray.autoscaler._private.kuberay.autoscaling_config import _derive_autoscaling_config_from_ray_cr
    from ray.autoscaler._private.util import validate_config

    cr = {"apiVersion": "ray.io/v1", "kind": "RayCluster", "metadata": {"name": "t", "namespace": "default"},
          "spec": copy.deepcopy(spec)}
    cfg = _derive_autoscaling_config_from_ray_cr(cr)
    validate_config(cfg)
    types = cfg["available_node_types"]
    assert types["headgroup"]["resources"]["CPU"] == 0  # num-cpus: "0": no training on the head
    assert types["gpu"]["resources"]["GPU"] == 1
    assert types["gpu"]["max_workers"] >= 2


@pytest.mark.parametrize("name,spec", ray_cluster_specs(), ids=[n for n, _ in ray_cluster_specs()])
def test_kuberay_versions_network_and_auth(name, spec):
    ray_version = _ray_version()
    assert spec["rayVersion"] == ray_version
    assert spec["authOptions"]["mode"] == "token"
    head = spec["headGroupSpec"]
    assert head.get("serviceType", "ClusterIP") == "ClusterIP" and not head.get("enableIngress")
    images = [c["image"] for g in [head, *spec["workerGroupSpecs"]] for c in g["template"]["spec"]["containers"]]
    for image in images:
        assert image.endswith(f":{raylit.__version__}-ray{ray_version}-py311-gpu"), image
    for group in spec["workerGroupSpecs"]:
        pod = group["template"]["spec"]
        assert any(v.get("emptyDir", {}).get("medium") == "Memory" for v in pod.get("volumes", []))
        assert any(m["mountPath"] == "/dev/shm" for c in pod["containers"] for m in c.get("volumeMounts", []))
        assert any(t["key"] == "nvidia.com/gpu" for t in pod.get("tolerations", []))


def test_dockerfile_pins_the_same_versions():
    text = (CONFIGS / "kuberay" / "Dockerfile").read_text()
    assert f"FROM rayproject/ray:{_ray_version()}-py311-gpu" in text
    assert f'"ray[default,train,tune]=={_ray_version()}"' in text
    assert f"raylit-{raylit.__version__}-py3-none-any.whl" in text
    # the model code that rayjob.yaml's run config names is on the image's PYTHONPATH
    copy_line = next(line for line in text.splitlines() if line.startswith("COPY examples/"))
    sources, dest = copy_line.split()[1:-1], copy_line.split()[-1]
    assert all((ROOT / s).is_file() for s in sources) and "examples/classifier.py" in sources
    assert f"ENV PYTHONPATH={dest.rstrip('/').rsplit('/', 1)[0]}" in text


def test_rayjob_has_a_job_style_lifecycle_and_runs_the_example_config(monkeypatch):
    from raylit.cli import parse_run_args

    docs = {d["kind"]: d for _, d in kube_docs() if _.name == "rayjob.yaml"}
    spec = docs["RayJob"]["spec"]
    assert spec["shutdownAfterJobFinishes"] is True and spec["ttlSecondsAfterFinished"] > 0
    assert spec["activeDeadlineSeconds"] > 0
    assert spec["entrypoint"] == "python -m raylit.cli fit --config /home/ray/raylit/run.yaml"
    run_yaml = docs["ConfigMap"]["data"]["run.yaml"]
    # The same run as examples/configs/classifier.yaml, only on 2 GPU nodes with checkpoints in S3.
    local = load(ROOT / "examples" / "configs" / "classifier.yaml")
    remote = yaml.safe_load(run_yaml)
    assert remote["trainer"].pop("accelerator") == "gpu" and remote["trainer"].pop("num_nodes") == 2
    assert remote["trainer"]["callbacks"][0]["init_args"].pop("dirpath").startswith("s3://")
    for key in ("accelerator", "num_nodes"):
        local["trainer"].pop(key)
    local["trainer"]["callbacks"][0]["init_args"].pop("dirpath")
    assert remote == local
    # and raylit's own parser accepts it (class paths resolve, keys exist), with examples/ importable as in the
    # image (see the Dockerfile)
    monkeypatch.setattr("sys.path", [str(ROOT)] + sys.path)
    parse_run_args("fit", ["--config", run_yaml])


@pytest.mark.skipif(KUBERAY_CRDS is None,
                    reason="no KubeRay CRDs: neither ../shared/kuberay-crds nor $RAYLIT_KUBERAY_CRD_DIR (a directory "
                           "with KubeRay's ray.io_*.yaml CRDs)")
def test_kuberay_manifests_against_the_full_crds():
    """The operator's own OpenAPI schemas (shared/kuberay-crds: KubeRay v1.7.0), made strict (additionalProperties: false wherever
    properties are listed and unknown fields are not preserved)."""
    import jsonschema

    def strict(node):
        if isinstance(node, dict):
            if "properties" in node and not node.get("x-kubernetes-preserve-unknown-fields"):
                node.setdefault("additionalProperties", False)
            for v in node.values():
                strict(v)
        elif isinstance(node, list):
            for v in node:
                strict(v)
        return node

    crd_dir = KUBERAY_CRDS
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    schemas = {}
    for kind, plural in (("RayCluster", "rayclusters"), ("RayJob", "rayjobs")):
        crd = yaml.load((crd_dir / f"ray.io_{plural}.yaml").read_text(), Loader=loader)
        version = next(v for v in crd["spec"]["versions"] if v["name"] == "v1")
        schemas[kind] = strict(version["schema"]["openAPIV3Schema"])
    checked = []
    for path, doc in kube_docs():
        if doc["kind"] in schemas:
            errors = [e.message for e in jsonschema.Draft7Validator(schemas[doc["kind"]]).iter_errors(doc)]
            assert errors == [], path.name
            checked.append(doc)
    assert {d["kind"] for d in checked} == {"RayCluster", "RayJob"}
    # and a misspelt field in a copy is caught
    broken = copy.deepcopy(next(d for d in checked if d["kind"] == "RayJob"))
    broken["spec"]["rayClusterSpec"]["headGroupSpec"]["rayStartParam"] = {}
    assert list(jsonschema.Draft7Validator(schemas["RayJob"]).iter_errors(broken))


# --------------------------------------------------------------------------------------------------------------
# everything
# --------------------------------------------------------------------------------------------------------------
_SECRET_PATTERNS = [
    r"AKIA[0-9A-Z]{16}",                                  # AWS access key id
    r"(?i)aws_secret_access_key",
    r"(?i)aws_access_key_id\s*[:=]",
    r"-----BEGIN [A-Z ]*PRIVATE KEY-----",
    r"(?i)password\s*[:=]",
    r"RAY_AUTH_TOKEN\s*[:=]\s*[\"']?[A-Za-z0-9+/_-]{16,}",   # a literal token ($(...) or a secretKeyRef is fine)
    r"(?i)\b(ghp|glpat|xox[bp])[-_][A-Za-z0-9]{10,}",
]


def test_no_credentials_anywhere():
    files = [p for p in CONFIGS.rglob("*") if p.is_file()]
    assert files
    for path in files:
        text = path.read_text()
        for pattern in _SECRET_PATTERNS:
            for match in re.finditer(pattern, text):
                line = text[:match.start()].count("\n") + 1
                pytest.fail(f"{path.relative_to(ROOT)}:{line} looks like a credential: {match.group(0)!r}")


def test_readme_covers_every_config_and_script():
    readme = (CONFIGS / "README.md").read_text()
    for path in [*RAY_UP, *KUBERAY]:
        assert path.name in readme, f"README.md does not mention {path.name}"
    for script in ("cluster_up.sh", "submit.sh", "logs.sh", "cluster_down.sh"):
        assert f"scripts/{script}" in readme


@pytest.mark.parametrize("script", ["cluster_up.sh", "submit.sh", "logs.sh", "cluster_down.sh"])
def test_scripts_are_valid_bash(script):
    path = ROOT / "scripts" / script
    assert os.access(path, os.X_OK), f"{path} is not executable"
    subprocess.run(["bash", "-n", str(path)], check=True)
