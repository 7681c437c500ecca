"""The Kubernetes manifests under deploy/kubernetes, checked without a cluster.

- Assembly: the kustomizations are built here by parsing (resources, components, JSON 6902
  patches, generators, namespace, labels: the fields these files use, and a field this
  builder does not know fails the test), and compared with `kubectl kustomize` where kubectl
  is installed.
- Schemas: every object of a built-in kind validates strictly (unknown fields rejected)
  against the Kubernetes OpenAPI schemas shipped by the `kubernetes-validate` package, for the
  oldest and the newest Kubernetes version we claim. The CRD kinds (KEDA's ScaledObject, the
  Prometheus Operator's ServiceMonitor) have no schema offline: their shape is checked by
  parsing, field by field, below.
- The code: every command is parsed by the real entry point's own parser (Celery's click
  commands, `migrator`'s argparse, `python -m workers.health`), every MIGRATOR_* variable is
  a field of `migrator.settings.Settings` whose value the settings accept, every FLOWER_*
  variable is a Flower option, and the example rules, auth and schedule files are accepted
  by the product's own loaders.
"""

from __future__ import annotations

import base64
import copy
import importlib
import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
BASE = ROOT / "deploy" / "kubernetes"
COMPONENTS = sorted(path.parent for path in (BASE / "components").glob("*/kustomization.yaml"))
# The two ways to autoscale exclude each other (both remove the Deployment's replicas, and
# kustomize refuses the second removal): one overlay with each.
OVERLAYS = {"keda": ["keda", "servicemonitor"], "cpu": ["hpa-cpu"]}
PRODUCT_IMAGE = "migrator"
CRD_KINDS = {"ScaledObject", "ServiceMonitor"}  # no schema offline: checked by parsing below
CLUSTER_SCOPED = {"Namespace", "ClusterRole", "ClusterRoleBinding"}
K8S_VERSIONS = ("1.27", "latest")  # the oldest we claim (batch/v1 CronJob, autoscaling/v2)


# -- a small kustomize: just the fields these kustomizations use ------------------------------

KNOWN_FIELDS = {"apiVersion", "kind", "namespace", "labels", "resources", "components",
                "patches", "images", "secretGenerator", "configMapGenerator"}


def load_docs(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def kustomization(directory: Path) -> dict[str, Any]:
    data = yaml.safe_load((directory / "kustomization.yaml").read_text())
    unknown = set(data) - KNOWN_FIELDS
    assert not unknown, f"{directory}: this builder does not apply {sorted(unknown)}"
    return data


def build(directory: Path) -> list[dict[str, Any]]:
    """The objects `kustomize build directory` makes, for the fields in KNOWN_FIELDS."""
    spec = kustomization(directory)
    objects: list[dict[str, Any]] = []
    for entry in spec.get("resources", []):
        path = (directory / entry).resolve()
        objects += build(path) if path.is_dir() else copy.deepcopy(load_docs(path))
    for entry in spec.get("components", []):
        component = (directory / entry).resolve()
        assert kustomization(component)["kind"] == "Component", component
        objects = apply_component(component, objects)
    objects = apply_generators(directory, spec, objects)
    objects = apply_patches(spec, objects)
    for obj in objects:
        if spec.get("namespace") and obj["kind"] not in CLUSTER_SCOPED:
            obj["metadata"]["namespace"] = spec["namespace"]
        for label in spec.get("labels", []):
            assert set(label) <= {"pairs", "includeTemplates", "includeSelectors"}, label
            assert not label.get("includeSelectors"), "selectors are immutable: never add to them"
            obj["metadata"].setdefault("labels", {}).update(label["pairs"])
            if label.get("includeTemplates"):
                claims = obj["spec"].get("volumeClaimTemplates", []) if (
                    obj["kind"] == "StatefulSet") else []
                for template in [*pod_templates(obj), *claims]:
                    template.setdefault("metadata", {}).setdefault("labels", {}).update(
                        label["pairs"])
        for image in spec.get("images", []):
            for container in containers(obj):
                name, _, tag = container["image"].partition(":")
                if name == image["name"]:
                    container["image"] = (f"{image.get('newName', name)}:"
                                          f"{image.get('newTag', tag)}")
    return objects


def apply_component(directory: Path, objects: list[dict[str, Any]]) -> list[dict[str, Any]]:
    spec = kustomization(directory)
    for entry in spec.get("resources", []):
        objects = objects + copy.deepcopy(load_docs(directory / entry))
    return apply_patches(spec, objects)


def apply_patches(spec: dict[str, Any], objects: list[dict[str, Any]]) -> list[dict[str, Any]]:
    for patch in spec.get("patches", []):
        target = patch["target"]
        matched = [obj for obj in objects if obj["kind"] == target["kind"]
                   and obj["metadata"]["name"] == target["name"]
                   and obj["apiVersion"] == f"{target['group']}/{target['version']}"]
        assert matched, f"patch target {target} matches nothing"
        for obj in matched:
            for operation in yaml.safe_load(patch["patch"]):
                json_patch(obj, operation)
    return objects


def json_patch(obj: dict[str, Any], operation: dict[str, Any]) -> None:
    *parents, last = operation["path"].strip("/").split("/")
    node: Any = obj
    for part in parents:
        node = node[int(part)] if isinstance(node, list) else node[part]
    if operation["op"] == "remove":
        del node[last]  # a KeyError here is kustomize's "no such path" error
    elif operation["op"] in ("add", "replace"):
        node[last] = operation["value"]
    else:
        raise AssertionError(f"unsupported patch op {operation['op']}")


def apply_generators(directory: Path, spec: dict[str, Any],
                     objects: list[dict[str, Any]]) -> list[dict[str, Any]]:
    for field, kind in (("configMapGenerator", "ConfigMap"), ("secretGenerator", "Secret")):
        for generator in spec.get(field, []):
            assert set(generator) <= {"name", "namespace", "behavior", "files", "literals"}
            texts = {}
            for entry in generator.get("files", []):
                key, _, source = entry.rpartition("=") if "=" in entry else (entry, "", entry)
                texts[key] = (directory / source).read_text()
            for entry in generator.get("literals", []):
                key, _, value = entry.partition("=")
                texts[key] = value
            data = {key: base64.b64encode(text.encode()).decode() if kind == "Secret" else text
                    for key, text in texts.items()}
            existing = [obj for obj in objects
                        if obj["kind"] == kind and obj["metadata"]["name"] == generator["name"]]
            assert generator.get("behavior") in ("replace", "merge"), generator
            assert len(existing) == 1, f"{kind} {generator['name']} is not in the base"
            obj = existing[0]
            if generator["behavior"] == "replace":
                obj.pop("stringData", None)
                obj["data"] = data
            elif kind == "Secret":
                obj.setdefault("data", {}).update(data)
                for key in data:
                    obj.get("stringData", {}).pop(key, None)
            else:
                obj.setdefault("data", {}).update(data)
    return objects


def pod_templates(obj: dict[str, Any]) -> list[dict[str, Any]]:
    if obj["kind"] in ("Deployment", "StatefulSet", "DaemonSet", "Job"):
        return [obj["spec"]["template"]]
    if obj["kind"] == "CronJob":
        job = obj["spec"]["jobTemplate"]
        return [job, job["spec"]["template"]]
    return []


def pod_spec(obj: dict[str, Any]) -> dict[str, Any] | None:
    templates = pod_templates(obj)
    return templates[-1]["spec"] if templates else None


def containers(obj: dict[str, Any]) -> list[dict[str, Any]]:
    spec = pod_spec(obj)
    return [*spec.get("initContainers", []), *spec["containers"]] if spec else []


def find(objects: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    found = [obj for obj in objects if obj["kind"] == kind and obj["metadata"]["name"] == name]
    assert len(found) == 1, f"{kind}/{name}: {len(found)} found"
    return found[0]


def product_containers(objects: list[dict[str, Any]]):
    for obj in objects:
        for container in containers(obj):
            if container["image"].split(":")[0] == PRODUCT_IMAGE:
                yield obj, container


def environment(objects: list[dict[str, Any]], container: dict[str, Any]) -> dict[str, Any]:
    """The container's environment as the kubelet assembles it: envFrom first, env wins."""
    env: dict[str, Any] = {}
    for source in container.get("envFrom", []):
        if "configMapRef" in source:
            env.update(find(objects, "ConfigMap", source["configMapRef"]["name"])["data"])
        else:
            ref = source["secretRef"]
            assert ref.get("optional") or any(
                obj["kind"] == "Secret" and obj["metadata"]["name"] == ref["name"]
                for obj in objects), f"secret {ref['name']} is neither optional nor shipped"
    for variable in container.get("env", []):
        env[variable["name"]] = variable.get("value", variable.get("valueFrom"))
    return env


def mounts(obj: dict[str, Any], container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """mountPath -> the pod volume mounted there."""
    volumes = {volume["name"]: volume for volume in pod_spec(obj).get("volumes", [])}
    return {mount["mountPath"]: volumes[mount["name"]]
            for mount in container.get("volumeMounts", [])}


def file_in_mounts(objects, obj, container, path: str) -> str:
    """The content of `path` as the container sees it from its ConfigMap or Secret volumes."""
    for mount_path, volume in mounts(obj, container).items():
        if not path.startswith(mount_path.rstrip("/") + "/"):
            continue
        key = path[len(mount_path.rstrip("/")) + 1:]
        if "configMap" in volume:
            return find(objects, "ConfigMap", volume["configMap"]["name"])["data"][key]
        if "secret" in volume:
            secret = find(objects, "Secret", volume["secret"]["secretName"])
            if key in secret.get("stringData", {}):
                return secret["stringData"][key]
            return base64.b64decode(secret["data"][key]).decode()
    raise AssertionError(f"{path} is in no ConfigMap or Secret volume of {container['name']}")


@pytest.fixture(scope="module")
def base() -> list[dict[str, Any]]:
    return build(BASE)


def write_overlay(directory: Path, components: list[str]) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "kustomization.yaml").write_text(yaml.safe_dump({
        "apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization",
        "resources": [os.path.relpath(BASE, directory)],
        "components": [os.path.relpath(BASE / "components" / name, directory)
                       for name in components]}))
    return directory


@pytest.fixture(scope="module")
def everything(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    """Every object of both overlays (OVERLAYS), the base's once."""
    objects: dict[tuple[str, str, str], dict[str, Any]] = {}
    for name, components in OVERLAYS.items():
        overlay = write_overlay(tmp_path_factory.mktemp(name), components)
        objects.update({identity(obj): obj for obj in build(overlay)})
    return list(objects.values())


# -- every file listed, every listed file there -----------------------------------------------


def test_every_manifest_is_listed_in_a_kustomization_and_every_listed_file_exists():
    listed: set[Path] = set()
    for file in BASE.rglob("kustomization.yaml"):
        for entry in kustomization(file.parent).get("resources", []):
            path = (file.parent / entry).resolve()
            assert path.exists(), f"{file}: {entry} does not exist"
            if path.is_file():
                listed.add(path)
    on_disk = {path.resolve() for path in BASE.rglob("*.yaml") if path.name != "kustomization.yaml"}
    assert on_disk == listed, {"not listed": on_disk - listed, "listed": listed - on_disk}
    assert (BASE / "rbac-config.yaml").resolve() in listed
    for directory in {path.parent for path in on_disk}:
        assert (directory / "kustomization.yaml").exists(), directory
    assert [component.name for component in COMPONENTS] == ["hpa-cpu", "keda", "servicemonitor"]


def identity(obj: dict[str, Any]) -> tuple[str, str, str]:
    return obj["kind"], obj["metadata"].get("namespace", ""), obj["metadata"]["name"]


def kubectl_kustomize(kubectl: str, directory: Path) -> list[dict[str, Any]]:
    """kubectl's build, with Secret data decoded (it wraps base64 lines, we do not)."""
    out = subprocess.run([kubectl, "kustomize", str(directory)], capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return sorted((decoded(doc) for doc in yaml.safe_load_all(out.stdout) if doc), key=identity)


def decoded(obj: dict[str, Any]) -> dict[str, Any]:
    if obj["kind"] == "Secret" and "data" in obj:
        obj = {**obj, "data": {key: base64.b64decode(value).decode()
                               for key, value in obj["data"].items()}}
    return obj


# -- schemas ----------------------------------------------------------------------------------


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_every_object_validates_against_the_kubernetes_schemas(everything, version):
    import kubernetes_validate

    if version == "latest":
        version = kubernetes_validate.utils.latest_version()
    unvalidated = set()
    for obj in everything:
        try:
            kubernetes_validate.validate(obj, version, strict=True)
        except kubernetes_validate.SchemaNotFoundError:
            unvalidated.add(obj["kind"])
        except kubernetes_validate.ValidationError as exc:
            path = ".".join(str(part) for part in exc.path)
            raise AssertionError(f"{identity(obj)} on {version}: {path}: {exc.message}") from None
    assert unvalidated == CRD_KINDS


def test_the_schema_check_rejects_a_misspelt_field_and_a_wrong_type(base):
    import kubernetes_validate

    worker = copy.deepcopy(find(base, "Deployment", "migrator-worker"))
    worker["spec"]["template"]["spec"]["terminationGracePeriod"] = 600
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(worker, "1.30", strict=True)
    worker = copy.deepcopy(find(base, "Deployment", "migrator-worker"))
    worker["spec"]["template"]["spec"]["containers"][0]["ports"][0]["containerPort"] = "9100"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(worker, "1.30", strict=True)


# -- commands and settings are the code's -----------------------------------------------------


def celery_command(args: list[str]) -> tuple[str, dict[str, Any]]:
    """Parse `celery ...` with Celery's own click commands: the subcommand and its options."""
    from celery.bin.base import CLIContext
    from celery.bin.celery import celery

    context = celery.make_context("celery", list(args))
    rest = [*(getattr(context, "_protected_args", None) or context.protected_args),
            *context.args]
    name, command, sub_args = celery.resolve_command(context, rest)
    app = importlib.import_module(context.params["app"]).app
    context.obj = CLIContext(app=app, no_color=True, workdir=None, quiet=True)
    return name, command.make_context(name, sub_args, parent=context).params


def test_commands_are_the_real_entry_points(base):
    from celery import Celery

    from migrator.cli import build_parser
    from workers import health

    roles = {}
    for obj, container in product_containers(base):
        command = container["command"]
        if command[0] == "celery":
            assert command[1:3] == ["-A", "workers"]
            assert isinstance(importlib.import_module("workers").app, Celery)
            name, params = celery_command(command[1:])
            roles[obj["metadata"]["name"]] = name
            if name == "worker":
                assert params["pool"].__module__ == "celery.concurrency.thread"
                assert params["without_gossip"] and params["without_mingle"]
                assert params["concurrency"] >= 1
            elif name == "beat":
                assert params["schedule"].startswith("/tmp/")  # the only writable place
            else:
                assert name == "flower" and command[4:] == []  # options come from FLOWER_*
        else:
            assert command[0] == "migrator", command
            args = build_parser().parse_args(command[1:])
            roles[obj["metadata"]["name"]] = args.command
            assert args.command == "enqueue" and args.wait
            assert file_in_mounts(base, obj, container, args.images)
        for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
            if probe in container and "exec" in container[probe]:
                assert container[probe]["exec"]["command"] == ["python", "-m", "workers.health"]
                assert callable(health.main)
    assert roles == {"migrator-worker": "worker", "migrator-beat": "beat",
                     "migrator-flower": "flower", "migrator-enqueue": "enqueue"}


def test_environment_variables_are_settings_of_the_code(base):
    from flower.options import options as flower_options

    from migrator.settings import Settings, load_settings

    seen = set()
    for obj, container in product_containers(base):
        env = environment(base, container)
        literal = {name: value for name, value in env.items() if isinstance(value, str)}
        for name in env:
            seen.add(name)
            if name.startswith("MIGRATOR_"):
                assert name[len("MIGRATOR_"):].lower() in Settings.model_fields, name
            elif name.startswith("FLOWER_"):
                option = flower_options._options.get(name[len("FLOWER_"):].lower().replace(
                    "_", "-"))
                assert option is not None, f"{name} is not a Flower option"
                if name in literal and option.type is int:
                    int(literal[name])
            else:
                raise AssertionError(f"{name} in {obj['metadata']['name']} is read by nothing")
        settings = load_settings(literal)  # every value is one the settings accept
        if settings.auth_file:
            assert file_in_mounts(base, obj, container, settings.auth_file)
        if settings.schedule_file:
            assert file_in_mounts(base, obj, container, settings.schedule_file)
        if "MIGRATOR_HEALTH_DIR" in env:
            volume = next(volume for path, volume in mounts(obj, container).items()
                          if str(settings.health_dir).startswith(path.rstrip("/") + "/"))
            assert "emptyDir" in volume  # writable under readOnlyRootFilesystem
    assert {"MIGRATOR_REDIS_URL", "MIGRATOR_AUTH_FILE", "MIGRATOR_SCHEDULE_FILE",
            "MIGRATOR_METRICS_PORT", "MIGRATOR_SHUTDOWN_TIMEOUT", "FLOWER_BASIC_AUTH"} <= seen


def test_the_example_inputs_are_accepted_by_the_product(base, tmp_path):
    from migrator.auth import load_auth
    from migrator.rules import load_rules
    from workers.schedule import load_schedules

    config = find(base, "ConfigMap", "migrator-config")["data"]
    (tmp_path / "images.json").write_text(config["images.json"])
    assert load_rules(tmp_path / "images.json", default_registry=None, default_namespace=None)
    (tmp_path / "schedule.yaml").write_text(config["schedule.yaml"])
    for schedule in load_schedules(str(tmp_path / "schedule.yaml")):
        assert schedule.images.startswith("/etc/migrator/config/")
    (tmp_path / "auth.json").write_text(
        find(base, "Secret", "migrator-auth")["stringData"]["auth.json"])
    assert load_auth(tmp_path / "auth.json", environ={}, required=True).entries


# -- the roles --------------------------------------------------------------------------------


def test_one_non_root_image_for_every_role(base):
    import migrator

    images = {container["image"] for _, container in product_containers(base)}
    assert images == {f"{PRODUCT_IMAGE}:{migrator.__version__}"}
    dockerfile = (ROOT / "Dockerfile").read_text()
    uid = int(re.findall(r"^USER\s+(\d+)", dockerfile, re.MULTILINE)[-1])
    for obj in base:
        spec = pod_spec(obj)
        if spec is None:
            continue
        assert spec["securityContext"]["runAsNonRoot"] is True
        assert spec["automountServiceAccountToken"] is False
        for container in containers(obj):
            security = container["securityContext"]
            assert security["allowPrivilegeEscalation"] is False
            assert security["readOnlyRootFilesystem"] is True
            assert security["capabilities"]["drop"] == ["ALL"]
            assert "memory" in container["resources"]["limits"]
            assert "cpu" in container["resources"]["requests"]
            for variable in container.get("env", []):
                assert not re.search(r"pass|secret|token", variable["name"], re.I) or (
                    "valueFrom" in variable), f"{variable['name']} is a literal secret"
        if any(container["image"].startswith(PRODUCT_IMAGE + ":")
               for container in containers(obj)):
            assert spec["securityContext"]["runAsUser"] == uid  # the Dockerfile's user


def test_worker_probes_shutdown_and_metrics_agree(base):
    from migrator.settings import load_settings

    worker = find(base, "Deployment", "migrator-worker")
    spec = pod_spec(worker)
    (container,) = spec["containers"]
    settings = load_settings({k: v for k, v in environment(base, container).items()
                              if isinstance(v, str)})
    grace = spec["terminationGracePeriodSeconds"]
    # running copies may finish, then are handed back, before the kubelet's SIGKILL
    assert 0 < settings.shutdown_timeout <= grace - 15
    # a worker that vanished without a word is covered by Redis; far longer than a shutdown
    assert settings.visibility_timeout >= 10 * grace
    liveness, startup = container["livenessProbe"], container["startupProbe"]
    assert liveness["timeoutSeconds"] >= 5 and startup["timeoutSeconds"] >= 5  # a Python start
    assert liveness["periodSeconds"] >= 10  # each probe costs ~0.5 s of CPU
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 60
    port = settings.metrics_port
    assert port > 0 and settings.metrics_address == "0.0.0.0"
    assert {"name": "metrics", "containerPort": port} in container["ports"]
    annotations = worker["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/port"] == str(port)
    service = find(base, "Service", "migrator-worker-metrics")
    assert service["spec"]["ports"][0]["targetPort"] == "metrics"
    assert selects(service["spec"]["selector"], worker)
    # requests/limits from the measured RSS (deploy/README.md): the limit leaves headroom
    resources = container["resources"]
    assert mebibytes(resources["limits"]["memory"]) >= 2 * mebibytes(
        resources["requests"]["memory"])


def mebibytes(quantity: str) -> int:
    number, unit = re.fullmatch(r"(\d+)(Mi|Gi)", quantity).groups()
    return int(number) * (1024 if unit == "Gi" else 1)


def selects(selector: dict[str, str], workload: dict[str, Any]) -> bool:
    labels = workload["spec"]["template"]["metadata"]["labels"]
    return all(labels.get(key) == value for key, value in selector.items())


def test_beat_runs_exactly_once(everything):
    beat = find(everything, "Deployment", "migrator-beat")
    assert beat["spec"]["replicas"] == 1
    assert beat["spec"]["strategy"] == {"type": "Recreate"}  # never two during a rollout
    scaled = [obj["spec"]["scaleTargetRef"]["name"] for obj in everything
              if obj["kind"] in ("ScaledObject", "HorizontalPodAutoscaler")]
    assert scaled and "migrator-beat" not in scaled


def test_redis_persists_never_evicts_and_is_where_the_settings_say(base):
    from migrator.settings import load_settings

    redis = find(base, "StatefulSet", "migrator-redis")
    (container,) = pod_spec(redis)["containers"]
    command = container["command"]
    option = dict(zip(command[1::2], command[2::2], strict=True))
    assert option["--maxmemory-policy"] == "noeviction"
    assert option["--appendonly"] == "yes"
    assert mebibytes(option["--maxmemory"].replace("mb", "Mi")) < mebibytes(
        container["resources"]["limits"]["memory"])
    assert redis["spec"]["volumeClaimTemplates"][0]["metadata"]["name"] == "data"
    service = find(base, "Service", redis["spec"]["serviceName"])
    assert selects(service["spec"]["selector"], redis)
    url = urlsplit(load_settings(find(base, "ConfigMap", "migrator-env")["data"]).redis_url)
    assert url.hostname == service["metadata"]["name"]
    assert url.port == service["spec"]["ports"][0]["port"] == 6379


def test_flower_has_basic_auth_from_a_secret_and_a_service(base):
    from flower.urls import handlers

    flower = find(base, "Deployment", "migrator-flower")
    (container,) = pod_spec(flower)["containers"]
    env = environment(base, container)
    ref = env["FLOWER_BASIC_AUTH"]["secretKeyRef"]
    secret = find(base, "Secret", ref["name"])
    user, _, password = secret["stringData"][ref["key"]].partition(":")
    assert user and password
    port = int(env["FLOWER_PORT"])
    assert {"name": "http", "containerPort": port} in container["ports"]
    service = find(base, "Service", "migrator-flower")
    assert selects(service["spec"]["selector"], flower)
    assert service["spec"]["ports"][0]["targetPort"] == "http"
    routes = {getattr(handler, "regex", None) and handler.regex.pattern.rstrip("$")
              or handler[0] for handler in handlers}
    assert container["readinessProbe"]["httpGet"]["path"] in routes
    annotations = flower["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/path"] in routes
    assert annotations["prometheus.io/port"] == str(port)


def test_the_enqueue_job_is_a_template_that_never_fires_by_itself(base):
    cronjob = find(base, "CronJob", "migrator-enqueue")
    assert cronjob["spec"]["suspend"] is True
    job = cronjob["spec"]["jobTemplate"]["spec"]
    assert job["backoffLimit"] == 0  # a failed run is reported, not enqueued again
    assert job["template"]["spec"]["restartPolicy"] == "Never"


# -- autoscaling and monitoring (CRDs: checked by parsing) ------------------------------------


def test_keda_scales_workers_on_the_queue_down_to_zero(base):
    from migrator.settings import load_settings

    objects = apply_component(BASE / "components" / "keda", copy.deepcopy(base))
    (scaled,) = [obj for obj in objects if obj["kind"] == "ScaledObject"]
    assert scaled["apiVersion"] == "keda.sh/v1alpha1"
    assert set(scaled["spec"]) <= {"scaleTargetRef", "minReplicaCount", "maxReplicaCount",
                                   "pollingInterval", "cooldownPeriod", "advanced", "triggers",
                                   "idleReplicaCount", "fallback"}
    target = scaled["spec"]["scaleTargetRef"]
    worker = find(objects, target["kind"], target["name"])
    assert worker["apiVersion"] == target["apiVersion"] and target["name"] == "migrator-worker"
    assert "replicas" not in worker["spec"]  # KEDA owns the count
    assert scaled["spec"]["minReplicaCount"] == 0 < scaled["spec"]["maxReplicaCount"]
    assert scaled["spec"]["cooldownPeriod"] >= 60
    (trigger,) = scaled["spec"]["triggers"]
    assert trigger["type"] == "redis"
    meta = trigger["metadata"]
    assert all(isinstance(value, str) for value in meta.values())  # KEDA wants strings
    settings = load_settings(find(objects, "ConfigMap", "migrator-env")["data"])
    url = urlsplit(settings.redis_url)
    namespace = kustomization(BASE)["namespace"]
    assert meta["address"] == f"{url.hostname}.{namespace}.svc.cluster.local:{url.port}"
    assert meta["databaseIndex"] == (url.path.strip("/") or "0")
    assert meta["listName"] == settings.queue  # kombu's list of the queue is its name
    assert int(meta["listLength"]) >= 1 and int(meta["activationListLength"]) == 0
    behavior = scaled["spec"]["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]
    assert behavior["scaleDown"]["stabilizationWindowSeconds"] >= 300


def test_the_cpu_autoscaler_is_the_fallback_for_the_workers(base):
    objects = apply_component(BASE / "components" / "hpa-cpu", copy.deepcopy(base))
    (hpa,) = [obj for obj in objects if obj["kind"] == "HorizontalPodAutoscaler"]
    target = hpa["spec"]["scaleTargetRef"]
    worker = find(objects, target["kind"], target["name"])
    assert target["name"] == "migrator-worker" and "replicas" not in worker["spec"]
    (metric,) = hpa["spec"]["metrics"]
    with pytest.raises(KeyError):  # with KEDA too: refused, as kustomize refuses it
        apply_component(BASE / "components" / "keda", objects)
    assert metric["resource"]["name"] == "cpu"
    assert pod_spec(worker)["containers"][0]["resources"]["requests"]["cpu"]


def test_service_monitors_scrape_the_workers_and_flower(base):
    objects = apply_component(BASE / "components" / "servicemonitor", copy.deepcopy(base))
    monitors = [obj for obj in objects if obj["kind"] == "ServiceMonitor"]
    assert {monitor["metadata"]["name"] for monitor in monitors} == {"migrator-worker",
                                                                     "migrator-flower"}
    for monitor in monitors:
        assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
        assert set(monitor["spec"]) == {"selector", "endpoints"}
        selector = monitor["spec"]["selector"]["matchLabels"]
        services = [obj for obj in objects if obj["kind"] == "Service"
                    and all(obj["metadata"]["labels"].get(k) == v for k, v in selector.items())]
        assert len(services) == 1, monitor["metadata"]["name"]
        ports = {port["name"] for port in services[0]["spec"]["ports"]}
        for endpoint in monitor["spec"]["endpoints"]:
            assert endpoint["port"] in ports and endpoint["path"] == "/metrics"


# -- the README's way in ----------------------------------------------------------------------


def readme_overlay() -> str:
    text = (ROOT / "deploy" / "README.md").read_text()
    blocks = re.findall(r"^( *)```yaml\n\1# my-migration/kustomization.yaml\n(.*?)^\1```",
                        text, re.S | re.M)
    assert len(blocks) == 1, "deploy/README.md shows the overlay once"
    indent, body = blocks[0]
    return textwrap.dedent(body)


def test_the_readme_overlay_builds_with_the_users_files(tmp_path):
    overlay = tmp_path / "my-migration"
    overlay.mkdir()
    shutil.copytree(ROOT / "deploy", tmp_path / "deploy")
    (overlay / "kustomization.yaml").write_text(readme_overlay())
    auth = '{"harbor.example.com": {"username": "robot$sync", "password": "s3cret"}}\n'
    (overlay / "auth.json").write_text(auth)
    (overlay / "images.json").write_text(
        '{"quay.io/coreos/etcd:v3.5.1": "harbor.example.com/x/etcd"}\n')
    objects = build(overlay)
    secret = find(objects, "Secret", "migrator-auth")
    assert base64.b64decode(secret["data"]["auth.json"]).decode() == auth
    assert "stringData" not in secret  # the example is gone, not merged
    flower = find(objects, "Secret", "migrator-flower")
    assert base64.b64decode(flower["data"]["basic_auth"]).decode() != "admin:change-me"
    config = find(objects, "ConfigMap", "migrator-config")["data"]
    assert "v3.5.1" in config["images.json"] and "schedule.yaml" in config
    images = {container["image"] for _, container in
              ((obj, c) for obj in objects for c in containers(obj))}
    assert not any(image.startswith(PRODUCT_IMAGE + ":") for image in images)  # set by the user
    assert any(obj["kind"] == "ScaledObject" for obj in objects)
    kubectl = shutil.which("kubectl")
    if kubectl is not None:  # and kustomize itself agrees
        assert sorted(map(decoded, objects), key=identity) == kubectl_kustomize(kubectl, overlay)


def test_the_health_module_runs_as_the_probe_runs_it(tmp_path):
    out = subprocess.run([sys.executable, "-m", "workers.health"], cwd=ROOT,
                         capture_output=True, text=True, timeout=60,
                         env={**os.environ, "PYTHONPATH": str(ROOT),
                              "MIGRATOR_HEALTH_DIR": str(tmp_path / "none")})
    assert out.returncode == 1
    assert "no heartbeat directory" in out.stderr
    assert "Traceback" not in out.stderr and "RuntimeWarning" not in out.stderr
