"""`migrator config`: the images a Kubernetes cluster runs, written as an images file.

Three steps, each usable on its own:

* `connect()` finds the credentials as kubectl does (`-k`, then `$KUBECONFIG`, then
  `~/.kube/config`, then the pod's service account) and returns a `kubernetes` `ApiClient`.
* `scan(api_client)` pages through Pods and the pod templates of Deployments, StatefulSets,
  DaemonSets, ReplicaSets, Jobs and CronJobs, and records every image with where it was seen.
* `plan(images, repo)` turns those images into rules: references normalised as `docker pull`
  reads them, duplicates folded, conflicts and skipped images reported, never overwritten.

The `kubernetes` package is imported inside the functions that need it: it takes a second or
two to import, and `migrator sync` should not pay for it. Lists are read as raw JSON
(`_preload_content=False`) rather than as the client's models: a 10,000-pod list builds
millions of model objects, and a model refuses fields newer than the client.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import tempfile
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import IO, TYPE_CHECKING, Any

import yaml

from migrator.documents import SCHEME, load_document, quote
from migrator.errors import (
    ClusterError,
    ClusterForbidden,
    ClusterUnauthorized,
    ClusterUnreachable,
    ConfigError,
)
from migrator.reference import (
    MAX_NAME_LENGTH,
    Reference,
    ReferenceError,
    check_registry,
    check_repository,
    normalize,
)
from migrator.rules import Rule, parse_rules, resolve_defaults

if TYPE_CHECKING:
    from kubernetes.client import ApiClient

SERVICE_ACCOUNT_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"
RBAC_MANIFEST = "deploy/kubernetes/rbac-config.yaml"
PAGE_SIZE = 500  # kubectl's --chunk-size default
REQUEST_TIMEOUT = 30.0
MAX_LIST_RESTARTS = 3
NAMESPACE_NAME = re.compile(r"[a-z0-9](?:[-a-z0-9]{0,61}[a-z0-9])?")  # DNS-1123 label


# -- what is read ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Resource:
    """A resource kind `migrator config` lists, and the client methods that list it."""

    kind: str
    plural: str
    group: str  # "" for the core group
    api: str  # class name in kubernetes.client
    list_all: str  # method listing every namespace
    list_namespaced: str

    @property
    def qualified(self) -> str:
        """`deployments.apps`, as kubectl and RBAC messages write it."""
        return f"{self.plural}.{self.group}" if self.group else self.plural


NAMESPACES = Resource("Namespace", "namespaces", "", "CoreV1Api", "list_namespace", "")
WORKLOADS: tuple[Resource, ...] = (
    Resource("Pod", "pods", "", "CoreV1Api",
             "list_pod_for_all_namespaces", "list_namespaced_pod"),
    Resource("Deployment", "deployments", "apps", "AppsV1Api",
             "list_deployment_for_all_namespaces", "list_namespaced_deployment"),
    Resource("StatefulSet", "statefulsets", "apps", "AppsV1Api",
             "list_stateful_set_for_all_namespaces", "list_namespaced_stateful_set"),
    Resource("DaemonSet", "daemonsets", "apps", "AppsV1Api",
             "list_daemon_set_for_all_namespaces", "list_namespaced_daemon_set"),
    Resource("ReplicaSet", "replicasets", "apps", "AppsV1Api",
             "list_replica_set_for_all_namespaces", "list_namespaced_replica_set"),
    Resource("Job", "jobs", "batch", "BatchV1Api",
             "list_job_for_all_namespaces", "list_namespaced_job"),
    Resource("CronJob", "cronjobs", "batch", "BatchV1Api",
             "list_cron_job_for_all_namespaces", "list_namespaced_cron_job"),
)
CONTAINER_FIELDS = (
    ("containers", "container"),
    ("initContainers", "init container"),
    ("ephemeralContainers", "ephemeral container"),  # pods only: templates have none
)


@dataclass(frozen=True)
class Permission:
    """One verb on one resource, cluster-wide (namespace None) or in one namespace."""

    verb: str
    resource: Resource
    namespace: str | None = None

    def __str__(self) -> str:
        where = f"in namespace {self.namespace}" if self.namespace else "in all namespaces"
        if self.resource is NAMESPACES:
            where = "(cluster-scoped)"
        return f"{self.verb} {self.resource.qualified} {where}"

    @property
    def can_i(self) -> str:
        scope = f" -n {self.namespace}" if self.namespace else ""
        if self.namespace is None and self.resource is not NAMESPACES:
            scope = " --all-namespaces"
        return f"kubectl auth can-i {self.verb} {self.resource.qualified}{scope}"


@dataclass(frozen=True)
class Sighting:
    """Where an image was seen: `deployment web/front (init container migrate)`."""

    kind: str
    namespace: str
    name: str
    container_type: str
    container: str
    # A ReplicaSet its Deployment scaled to 0: a past revision, kept for rollbacks.
    old_revision: bool = False

    def __str__(self) -> str:
        return (f"{self.kind.lower()} {self.namespace}/{self.name} "
                f"({self.container_type} {self.container})")


@dataclass
class ScanResult:
    """What `scan` found. `images` maps each image, as written in the spec, to its sightings."""

    namespaces: list[str]
    workloads: Counter[str] = field(default_factory=Counter)  # kind -> objects read
    images: dict[str, list[Sighting]] = field(default_factory=dict)
    unserved: list[Resource] = field(default_factory=list)  # kinds the server does not know

    def add(self, image: str, sighting: Sighting) -> None:
        self.images.setdefault(image, []).append(sighting)


def pod_spec(kind: str, obj: Mapping[str, Any]) -> Mapping[str, Any]:
    """The pod spec of an object: its own for a Pod, the template's for a workload."""
    spec = obj.get("spec") or {}
    if kind == "Pod":
        return spec
    if kind == "CronJob":
        spec = (spec.get("jobTemplate") or {}).get("spec") or {}
    return (spec.get("template") or {}).get("spec") or {}


def is_old_revision(kind: str, obj: Mapping[str, Any]) -> bool:
    """A ReplicaSet that its Deployment scaled to zero: a past rollout, not what runs."""
    if kind != "ReplicaSet" or (obj.get("spec") or {}).get("replicas") != 0:
        return False
    owners = (obj.get("metadata") or {}).get("ownerReferences") or []
    return any(owner.get("kind") == "Deployment" and owner.get("controller") for owner in owners)


def images_of(kind: str, obj: Mapping[str, Any]) -> Iterator[tuple[str, Sighting]]:
    """(image, sighting) for every container, init container and ephemeral container."""
    metadata = obj.get("metadata") or {}
    old = is_old_revision(kind, obj)
    spec = pod_spec(kind, obj)
    for key, container_type in CONTAINER_FIELDS:
        for container in spec.get(key) or ():
            image = container.get("image")
            yield (
                image.strip() if isinstance(image, str) else "",
                Sighting(kind, metadata.get("namespace", ""), metadata.get("name", ""),
                         container_type, str(container.get("name", "?")), old),
            )


# -- connecting --------------------------------------------------------------------------------


@dataclass
class Connection:
    """An `ApiClient` and, for messages, where its configuration came from."""

    api_client: ApiClient
    origin: str  # "context 'admin' of /home/me/.kube/config" or "the pod's service account"

    @property
    def host(self) -> str:
        return str(self.api_client.configuration.host)


def find_kubeconfig(
    kubeconfig: str | None, environ: Mapping[str, str], service_account_dir: str
) -> str | None:
    """The kubeconfig to read, as kubectl picks it; None means the in-cluster service account."""
    if kubeconfig:
        path = os.path.expanduser(kubeconfig)
        if not os.path.isfile(path):
            raise ConfigError(f"-k/--kubeconfig {quote(kubeconfig)}: file not found")
        return path
    variable = environ.get("KUBECONFIG", "")
    if variable.strip():
        paths = [os.path.expanduser(p) for p in variable.split(os.pathsep) if p]
        found = [p for p in paths if os.path.isfile(p)]
        if not found:
            raise ConfigError(f"KUBECONFIG={quote(variable)}: no such file")
        return os.pathsep.join(found)  # the client merges several files as kubectl does
    home = environ.get("HOME") or os.path.expanduser("~")
    default = os.path.join(home, ".kube", "config")
    if os.path.isfile(default):
        return default
    if environ.get("KUBERNETES_SERVICE_HOST") and os.path.isfile(
        os.path.join(service_account_dir, "token")
    ):
        return None
    raise ConfigError(
        f"no kubeconfig: pass -k/--kubeconfig, set KUBECONFIG, or create {default} "
        "(inside a pod, the service account is used when it is mounted)"
    )


# A kubeconfig is user input read by another library: any of these means "cannot use it".
_KUBECONFIG_ERRORS = (yaml.YAMLError, OSError, KeyError, TypeError, AttributeError, ValueError)


def connect(
    kubeconfig: str | None,
    context: str | None,
    environ: Mapping[str, str],
    *,
    service_account_dir: str = SERVICE_ACCOUNT_DIR,
) -> Connection:
    """An ApiClient for the chosen kubeconfig and context, or for the pod's service account."""
    from kubernetes import client, config
    from kubernetes.config.config_exception import ConfigException

    path = find_kubeconfig(kubeconfig, environ, service_account_dir)
    if path is None:
        if context:
            raise ConfigError("--context needs a kubeconfig: none was found, only the pod's "
                              "service account")
        configuration = client.Configuration()
        loader = config.incluster_config.InClusterConfigLoader(
            token_filename=os.path.join(service_account_dir, "token"),
            cert_filename=os.path.join(service_account_dir, "ca.crt"),
            environ=environ,
        )
        try:
            loader.load_and_set(configuration)
        except ConfigException as exc:
            raise ConfigError(f"in-cluster service account: {exc}") from None
        return Connection(client.ApiClient(configuration), "the pod's service account")

    names, current = kubeconfig_contexts(path)
    known = ", ".join(names) or "none"
    if context and context not in names:
        raise ConfigError(f"kubeconfig {path}: unknown context {quote(context)} "
                          f"(known contexts: {known})")
    chosen = context or current
    if not chosen:
        raise ConfigError(f"kubeconfig {path}: no current-context: pass --context "
                          f"(known contexts: {known})")
    try:
        # persist_config=False: a read-only command never rewrites the user's kubeconfig.
        api_client = config.new_client_from_config(
            config_file=path, context=chosen, persist_config=False)
    except (ConfigException, *_KUBECONFIG_ERRORS) as exc:
        raise ConfigError(f"kubeconfig {path}, context {quote(chosen)}: {_one_line(exc)}"
                          ) from None
    return Connection(api_client, f"context {quote(chosen)} of {path}")


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())


def kubeconfig_contexts(path: str) -> tuple[list[str], str | None]:
    """The context names of a kubeconfig (several files joined by os.pathsep, merged as
    kubectl merges them: the first file to name a context or a current-context wins)."""
    names: list[str] = []
    current: str | None = None
    for name in path.split(os.pathsep):
        try:
            with open(name, encoding="utf-8") as handle:
                data = yaml.safe_load(handle)
        except (yaml.YAMLError, OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"kubeconfig {name}: cannot read it: {_one_line(exc)}") from None
        if not isinstance(data, Mapping):
            raise ConfigError(f"kubeconfig {name}: not a kubeconfig (expected a mapping with "
                              "clusters, users and contexts)")
        for item in data.get("contexts") or ():
            if isinstance(item, Mapping) and item.get("name") and item["name"] not in names:
                names.append(str(item["name"]))
        current = current or (str(data["current-context"]) if data.get("current-context")
                              else None)
    return names, current


# -- scanning ----------------------------------------------------------------------------------


def _status_message(body: object) -> str:
    """The `message` of a Kubernetes Status body, if the body is one."""
    try:
        status = json.loads(body) if isinstance(body, str | bytes) else None
    except ValueError:
        return ""
    return str(status.get("message", "")) if isinstance(status, dict) else ""


def _transport_problem(host: str, exc: BaseException) -> ClusterUnreachable:
    text = str(exc)
    if "CERTIFICATE_VERIFY_FAILED" in text or "certificate verify failed" in text:
        return ClusterUnreachable(
            f"cannot verify the certificate of the API server {host}: check "
            "certificate-authority(-data) of the cluster in the kubeconfig")
    if "SSL" in text or "TLS" in text:
        return ClusterUnreachable(f"TLS handshake with the API server {host} failed: {text}")
    return ClusterUnreachable(
        f"cannot reach the API server {host}: {text or type(exc).__name__} "
        "(is the cluster up, the address right, a VPN or proxy needed?)")


class _Lister:
    """The API calls of a scan: raw JSON, lists page by page, transport failures as
    ClusterUnreachable. HTTP statuses stay ApiExceptions for the caller to judge."""

    def __init__(self, api_client: ApiClient, page_size: int, request_timeout: float) -> None:
        self.api_client = api_client
        self.page_size = page_size
        self.timeout = request_timeout
        self.host = str(api_client.configuration.host)
        self._apis: dict[str, Any] = {}

    def api(self, name: str) -> Any:
        if name not in self._apis:
            from kubernetes import client

            self._apis[name] = getattr(client, name)(self.api_client)
        return self._apis[name]

    def call(self, method: Callable[..., Any], **kwargs: Any) -> Any:
        """One request; returns the decoded JSON body. ApiException is left to the caller."""
        import urllib3
        from kubernetes.client.exceptions import ApiException

        try:
            response = method(_preload_content=False, _request_timeout=self.timeout, **kwargs)
            return json.loads(response.data)
        except ApiException as exc:
            if not exc.status:  # the client reports some TLS failures as status 0
                raise _transport_problem(self.host, exc) from None
            raise
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise _transport_problem(self.host, getattr(exc, "reason", None) or exc) from None
        except ValueError as exc:
            raise ClusterError(f"the API server {self.host} sent a body that is not JSON: "
                               f"{exc}") from None

    def pages(
        self, method: Callable[..., Any], **kwargs: Any
    ) -> Iterator[list[dict[str, Any]] | None]:
        """Every page of a list, following `continue`. Yields None when the list starts over:
        the caller drops what it read so far (a page may also be legitimately empty)."""
        from kubernetes.client.exceptions import ApiException

        token: str | None = None
        restarts = 0
        while True:
            try:
                body = self.call(method, limit=self.page_size, _continue=token, **kwargs)
            except ApiException as exc:
                if exc.status == 410 and token is not None and restarts < MAX_LIST_RESTARTS:
                    # The continue token expired (the server keeps a list snapshot for about
                    # 5 minutes): start over rather than mix two snapshots.
                    restarts += 1
                    token = None
                    yield None
                    continue
                raise
            yield list(body.get("items") or [])
            token = (body.get("metadata") or {}).get("continue") or None
            if token is None:
                return


def scan(
    api_client: ApiClient,
    *,
    namespaces: Sequence[str] | None = None,
    page_size: int = PAGE_SIZE,
    request_timeout: float = REQUEST_TIMEOUT,
) -> ScanResult:
    """Every image used by workloads in `namespaces` (None: all namespaces).

    Raises ClusterUnreachable, ClusterUnauthorized, or ClusterForbidden naming every list
    that was refused (the scan goes on after a 403 so that all of them are reported at once).
    """
    from kubernetes.client.exceptions import ApiException

    lister = _Lister(api_client, page_size, request_timeout)
    forbidden: list[tuple[Permission, str]] = []

    def forbidden_here(exc: ApiException, permission: Permission) -> bool:
        """Record a 403 and go on; a 401 ends the scan (no other list would succeed)."""
        if exc.status == 401:
            raise ClusterUnauthorized(
                f"the API server {lister.host} refused the credentials (401 Unauthorized): "
                "the token or client certificate is wrong or expired: log in again or "
                "refresh the kubeconfig") from None
        if exc.status == 403:
            forbidden.append((permission, _status_message(exc.body)))
            return True
        return False

    if namespaces is None:
        scope: list[str | None] = [None]
        names: list[str] = []
        method = getattr(lister.api(NAMESPACES.api), NAMESPACES.list_all)
        try:
            for page in lister.pages(method):
                if page is None:
                    names = []
                    continue
                names.extend(str((item.get("metadata") or {}).get("name")) for item in page)
        except ApiException as exc:
            if not forbidden_here(exc, Permission("list", NAMESPACES)):
                raise _unexpected(lister.host, exc, f"list {NAMESPACES.qualified}") from None
        result = ScanResult(namespaces=sorted(set(names)))
    else:
        scope = list(namespaces)
        result = ScanResult(namespaces=list(namespaces))

    for resource in WORKLOADS:
        api = lister.api(resource.api)
        for namespace in scope:
            if namespace is None:
                method = getattr(api, resource.list_all)
                kwargs: dict[str, Any] = {}
            else:
                method = getattr(api, resource.list_namespaced)
                kwargs = {"namespace": namespace}
            seen: list[dict[str, Any]] = []
            try:
                for page in lister.pages(method, **kwargs):
                    if page is None:
                        seen = []  # restarted: what was read belongs to an expired snapshot
                    else:
                        seen.extend(page)
            except ApiException as exc:
                if forbidden_here(exc, Permission("list", resource, namespace)):
                    continue
                if exc.status == 404:
                    # The server does not serve this kind (an empty or missing namespace
                    # answers 200 with no items): nothing of it to read.
                    result.unserved.append(resource)
                    break
                raise _unexpected(lister.host, exc, f"list {resource.qualified}") from None
            for obj in seen:
                result.workloads[resource.kind] += 1
                for image, sighting in images_of(resource.kind, obj):
                    result.add(image, sighting)

    if forbidden:
        lines = [f"403 Forbidden: {permission}" + (f" (the server said: {said})" if said else "")
                 for permission, said in forbidden]
        lines.append(
            f"grant get/list on namespaces, pods, deployments, statefulsets, daemonsets, "
            f"replicasets, jobs and cronjobs, as {RBAC_MANIFEST} does; check with: "
            f"{forbidden[0][0].can_i}")
        raise ClusterForbidden(lines, [permission for permission, _ in forbidden])
    return result


def _unexpected(host: str, exc: Any, what: str) -> ClusterError:
    said = _status_message(exc.body)
    return ClusterError(f"the API server {host} answered {exc.status} {exc.reason or ''} to "
                        f"{what}".rstrip() + (f": {said}" if said else ""))


def check_namespaces(
    api_client: ApiClient, namespaces: Sequence[str], *, request_timeout: float = REQUEST_TIMEOUT
) -> None:
    """Fail on a namespace the cluster does not have: a typo would silently give no images.

    Needs `get namespaces`; a user limited to a few namespaces may lack it, and then the
    check is skipped rather than refusing a scan that may well succeed.
    """
    from kubernetes.client.exceptions import ApiException

    lister = _Lister(api_client, PAGE_SIZE, request_timeout)
    api = lister.api(NAMESPACES.api)
    unknown = []
    for namespace in namespaces:
        try:
            lister.call(api.read_namespace, name=namespace)
        except ApiException as exc:
            if exc.status == 404:
                unknown.append(namespace)
            elif exc.status == 401:
                raise ClusterUnauthorized(
                    f"the API server {lister.host} refused the credentials (401 Unauthorized): "
                    "the token or client certificate is wrong or expired") from None
            elif exc.status != 403:
                raise _unexpected(lister.host, exc, f"get namespace {namespace}") from None
    if unknown:
        raise ConfigError([f"-n/--namespaces: namespace {quote(name)} does not exist in the "
                           "cluster" for name in unknown])


# -- from images to rules ----------------------------------------------------------------------


@dataclass(frozen=True)
class Skipped:
    image: str  # as written in the spec
    reason: str
    seen: tuple[Sighting, ...]


@dataclass(frozen=True)
class Conflict:
    """Several source repositories that would land in one target repository."""

    target: str
    kept: str  # the source repository that keeps the target
    dropped: tuple[str, ...]
    seen: tuple[Sighting, ...]  # where the dropped images run


@dataclass
class Plan:
    """The images file to write and what to tell the user about it."""

    rules: dict[str, str | list[str] | None]  # the whole file, existing entries included
    added: dict[str, str]  # source -> target written by this run
    images: int  # distinct images found in the cluster (normalised when valid)
    present: int = 0  # images the merged file copies already
    skipped: list[Skipped] = field(default_factory=list)
    conflicts: list[Conflict] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def parse_repo(text: str) -> str:
    """`-t/--repo`: `registry/namespace[/...]`, checked as rule targets are."""
    value = text.strip().rstrip("/")
    example = "e.g. registry.example.com/test"
    if SCHEME.match(value):
        raise ConfigError(f"-t/--repo {quote(text)}: write it without a scheme such as "
                          f"https:// ({example})")
    parts = value.split("/")
    if len(parts) < 2 or "@" in value or ":" in parts[-1]:
        raise ConfigError(f"-t/--repo {quote(text)}: expected registry/namespace, with no tag "
                          f"({example})")
    try:
        registry = check_registry(parts[0])
        namespace = check_repository("/".join(parts[1:]))
    except ReferenceError as exc:
        raise ConfigError(f"-t/--repo {quote(text)}: {exc}") from None
    return f"{registry}/{namespace}"


def parse_namespaces(values: Sequence[str] | None) -> list[str] | None:
    """`-n a,b -n c` → ['a', 'b', 'c']; None when not given (all namespaces)."""
    if not values:
        return None
    names = [name.strip() for value in values for name in value.split(",") if name.strip()]
    problems = [f"-n/--namespaces: {quote(name)} is not a namespace name (lowercase letters, "
                "digits and '-', at most 63)" for name in names
                if not NAMESPACE_NAME.fullmatch(name)]
    if not names:
        problems.append("-n/--namespaces: no namespace given")
    if problems:
        raise ConfigError(problems)
    return list(dict.fromkeys(names))


def target_repository(source: Reference, repo: str, *, keep_namespace: bool) -> str:
    """Where a source repository goes: `<repo>/<name>`, or with `keep_namespace`
    `<repo>/<path-with-dashes>` (`quay.io/x/nginx` → `<repo>/x-nginx`).

    The flattened form stays one path component below `repo`: many managed registries (SWR,
    ACR personal, Docker Hub) refuse deeper paths.
    """
    if keep_namespace:
        name = source.repository.replace("/", "-")
    else:
        name = source.repository.rsplit("/", 1)[-1]
    check_repository(f"{repo.partition('/')[2]}/{name}")  # a long dashed name may not fit
    if len(f"{repo}/{name}") > MAX_NAME_LENGTH:
        raise ReferenceError(f"name longer than {MAX_NAME_LENGTH} characters, registry "
                             f"included ({len(repo) + 1 + len(name)})")
    return f"{repo}/{name}"


def _in_repo(reference: Reference, repo: str) -> bool:
    return reference.name.startswith(repo + "/")


def _covered_by(rules: Sequence[Rule], source: Reference, target_name: str) -> Rule | None:
    """An existing rule that already copies this tag into the same target repository."""
    for rule in rules:
        if rule.source.name != source.name or rule.target.name != target_name:
            continue
        if rule.source.digest is not None or not rule.needs_tag_list or source.tag is None:
            continue
        if rule.tag_pattern is None or re.fullmatch(rule.tag_pattern, source.tag):
            return rule
    return None


def plan(
    images: Mapping[str, Sequence[Sighting]],
    repo: str,
    *,
    keep_namespace: bool = False,
    include_old_revisions: bool = False,
    existing: Mapping[str, Any] | None = None,
    existing_rules: Sequence[Rule] = (),
) -> Plan:
    """Rules for `images` into `repo` (already checked by `parse_repo`).

    Deterministic: sources are handled in sorted order, so the first source in that order
    keeps a contested target. `existing` (raw entries of the file merged into) and
    `existing_rules` (the same, parsed) always win: kept as they are, they claim their
    targets first.
    """
    found, skipped = _normalise(images)
    total = len(found) + len(skipped)
    skipped += _leave_out(found, repo, include_old_revisions)
    targets, conflicts, unnamed = _claim_repositories(found, repo, keep_namespace,
                                                      existing_rules)
    skipped += unnamed
    existing = existing or {}
    added, present, notes, tag_conflicts = _claim_tags(found, targets, existing,
                                                       existing_rules)
    rules: dict[str, str | list[str] | None] = {**existing, **added}
    return Plan(
        rules=dict(sorted(rules.items())),
        added=dict(sorted(added.items())),
        images=total,
        present=present,
        skipped=skipped,
        conflicts=conflicts + tag_conflicts,
        notes=notes,
    )


def _normalise(
    images: Mapping[str, Sequence[Sighting]],
) -> tuple[dict[Reference, list[Sighting]], list[Skipped]]:
    """Images as `docker pull` reads them, spellings of one image folded together."""
    found: dict[Reference, list[Sighting]] = {}
    skipped: list[Skipped] = []
    for image in sorted(images):
        seen = list(images[image])
        if not image:
            skipped.append(Skipped(image, "the container names no image", tuple(seen)))
            continue
        try:
            reference = normalize(image)
        except ReferenceError as exc:
            skipped.append(Skipped(image, f"not a valid image reference: {exc}", tuple(seen)))
            continue
        found.setdefault(reference, []).extend(seen)
    # `repo@sha256:x` is copied anyway by `repo:tag@sha256:x`, which also writes the tag.
    tagged_pins = {(r.name, r.digest): r for r in sorted(found, key=str, reverse=True)
                   if r.digest and r.tag}
    for reference in [r for r in found if r.digest and not r.tag]:
        tagged = tagged_pins.get((reference.name, reference.digest))
        if tagged is not None:
            found[tagged].extend(found.pop(reference))
    return found, skipped


def _leave_out(
    found: dict[Reference, list[Sighting]], repo: str, include_old_revisions: bool
) -> list[Skipped]:
    """Take out (and report) the images that get no rule. Changes `found`."""
    skipped = []
    for reference in sorted(found, key=str):
        seen = tuple(found[reference])
        if _in_repo(reference, repo):
            reason = f"already in the target {repo}"
        elif not include_old_revisions and all(s.old_revision for s in seen):
            reason = ("only in past revisions of a Deployment (ReplicaSets scaled to 0): "
                      "--include-old-revisions copies them too")
        else:
            continue
        skipped.append(Skipped(str(reference), reason, seen))
        del found[reference]
    return skipped


def _claim_repositories(
    found: Mapping[Reference, list[Sighting]], repo: str, keep_namespace: bool,
    existing_rules: Sequence[Rule],
) -> tuple[dict[str, str], list[Conflict], list[Skipped]]:
    """Source repository → target repository, one source per target: the existing file's
    rules first, then the sources in sorted order. Returns (targets, conflicts, skipped)."""
    claims: dict[str, str] = {}
    for rule in existing_rules:
        claims.setdefault(rule.target.name, rule.source.name)
    by_name: dict[str, list[Reference]] = {}
    for reference in sorted(found, key=str):
        by_name.setdefault(reference.name, []).append(reference)
    targets: dict[str, str] = {}
    skipped: list[Skipped] = []
    dropped: dict[tuple[str, str], list[str]] = {}
    where: dict[tuple[str, str], list[Sighting]] = {}
    for name, references in sorted(by_name.items()):
        try:
            target = target_repository(references[0], repo, keep_namespace=keep_namespace)
        except ReferenceError as exc:
            skipped += [Skipped(str(r), f"no valid target name: {exc}", tuple(found[r]))
                        for r in references]
            continue
        owner = claims.setdefault(target, name)
        if owner == name:
            targets[name] = target
            continue
        dropped.setdefault((target, owner), []).append(name)
        for reference in references:
            where.setdefault((target, owner), []).extend(found[reference])
    conflicts = [Conflict(target, owner, tuple(names), tuple(where[(target, owner)]))
                 for (target, owner), names in sorted(dropped.items())]
    return targets, conflicts, skipped


def _claim_tags(
    found: Mapping[Reference, list[Sighting]], targets: Mapping[str, str],
    existing: Mapping[str, Any], existing_rules: Sequence[Rule],
) -> tuple[dict[str, str], int, list[str], list[Conflict]]:
    """One rule per image; a target tag written from one source only, as the rules loader
    demands. Returns (added rules, images the existing file covers, notes, conflicts)."""
    writes: dict[str, str] = {}  # target tag -> the source that writes it
    for rule in existing_rules:
        if not rule.needs_tag_list:
            for job in rule.jobs():
                if job.target.tag:
                    writes.setdefault(f"{job.target.name}:{job.target.tag}", str(job.source))
    added: dict[str, str] = {}
    notes: list[str] = []
    conflicts: list[Conflict] = []
    present = 0
    # Unpinned tags first: `nginx:1.25` keeps the tag; a pinned `nginx:1.25@sha256:…` seen too
    # is then copied by digest only, so neither overwrites the other.
    ordered = sorted((r for r in found if r.name in targets),
                     key=lambda r: (r.digest is not None, str(r)))
    for reference in ordered:
        source = str(reference)
        target_name = targets[reference.name]
        if source in existing:
            present += 1
            continue
        if reference.tag is None:  # pinned by digest alone: pushed by digest, writes no tag
            added[source] = target_name
            continue
        target = f"{target_name}:{reference.tag}"
        writer = writes.get(target)
        if writer == source or (reference.digest is None
                                and _covered_by(existing_rules, reference, target_name)):
            present += 1  # the existing file copies it already
        elif writer is None:
            writes[target] = source
            added[source] = target
        elif reference.digest is not None:
            # Written without its tag: a target without a tag would keep the source's tag.
            added[f"{reference.name}@{reference.digest}"] = target_name
            notes.append(f"{source}: {target} is written from {writer}, so this pinned image "
                         f"is copied by digest only ({target_name}@{reference.digest})")
        else:
            conflicts.append(Conflict(target, writer, (source,), tuple(found[reference])))
    return added, present, notes, conflicts


# -- the file ----------------------------------------------------------------------------------


def is_yaml(path: str) -> bool:
    return os.path.splitext(path)[1].lower() in (".yaml", ".yml")


def render(rules: Mapping[str, Any], *, as_yaml: bool) -> str:
    """The images file: keys sorted, 2-space indent, trailing newline."""
    if as_yaml:
        return yaml.safe_dump(dict(rules), sort_keys=True, default_flow_style=False, indent=2,
                              allow_unicode=True, width=1 << 16)
    return json.dumps(rules, sort_keys=True, indent=2, ensure_ascii=False) + "\n"


def write_file(path: str, text: str, *, replace: bool) -> None:
    """Write `text` to `path`. Without `replace`, an existing file is never touched (even one
    created while the cluster was scanned); with it, the file is swapped in atomically."""
    if not replace:
        try:
            with open(path, "x", encoding="utf-8") as handle:
                handle.write(text)
        except FileExistsError:
            raise ConfigError(f"{path}: the file appeared while the cluster was read: "
                              "pass --force to overwrite it or --merge to add to it") from None
        return
    directory = os.path.dirname(os.path.abspath(path))
    fd, temporary = tempfile.mkstemp(prefix=".images-", dir=directory)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.unlink(temporary)
        raise


def load_existing(
    path: str, *, repo: str, environ: Mapping[str, str]
) -> tuple[dict[str, Any], list[Rule]]:
    """The file `--merge` adds to, validated as `migrator sync` would read it."""
    document = load_document(path, required=False)
    if document.problems:
        raise ConfigError(document.problems)
    if not document.found:
        return {}, []
    registry, namespace = _defaults(repo, environ)
    rules = parse_rules(document.data, filename=path, default_registry=registry,
                        default_namespace=namespace)
    assert isinstance(document.data, Mapping)
    return dict(document.data), rules


def _defaults(repo: str, environ: Mapping[str, str]) -> tuple[str, str]:
    """Defaults for empty targets: DEFAULT_REGISTRY/DEFAULT_NAMESPACE, else the --repo."""
    registry, namespace = resolve_defaults(None, None, environ)
    repo_registry, _, repo_namespace = repo.partition("/")
    return registry or repo_registry, namespace or repo_namespace


# -- the command -------------------------------------------------------------------------------


def add_config_parser(commands: Any) -> argparse.ArgumentParser:
    """The `config` subcommand (image-migrator's flags, plus what conflicts and merges need)."""
    from migrator.cli import positive_float, positive_int  # cli imports this module

    parser = commands.add_parser(
        "config", help="write the images a Kubernetes cluster runs as a rules file",
        description="List the images used by workloads in a Kubernetes cluster and write them "
                    "as an images file that `migrator sync` reads unchanged.")
    parser.add_argument("-k", "--kubeconfig", metavar="PATH",
                        help="kubeconfig (default: $KUBECONFIG, else ~/.kube/config, else the "
                             "pod's service account)")
    parser.add_argument("--context", metavar="NAME",
                        help="kubeconfig context (default: its current-context)")
    parser.add_argument("-n", "--namespaces", action="append", metavar="NS1,NS2",
                        help="namespaces to read (default: all)")
    parser.add_argument("-t", "--repo", required=True, metavar="REGISTRY/NAMESPACE",
                        help="the target, e.g. registry.example.com/test")
    parser.add_argument("-o", "--output", default="images.json", metavar="FILE",
                        help="images file to write, JSON or .yaml/.yml, '-' for stdout "
                             "(default ./images.json)")
    existing = parser.add_mutually_exclusive_group()
    existing.add_argument("--force", action="store_true",
                          help="overwrite the output file if it exists")
    existing.add_argument("--merge", action="store_true",
                          help="keep the output file's entries and add the new images")
    parser.add_argument("--keep-namespace", action="store_true",
                        help="target <repo>/<source-namespace>-<name> instead of <repo>/<name>, "
                             "so that same-named images from different places do not collide")
    parser.add_argument("--include-old-revisions", action="store_true",
                        help="also copy images found only in past Deployment revisions")
    parser.add_argument("--chunk-size", type=positive_int, default=PAGE_SIZE, metavar="N",
                        help=f"objects per list request (default {PAGE_SIZE})")
    parser.add_argument("--request-timeout", type=positive_float, default=REQUEST_TIMEOUT,
                        metavar="SECONDS",
                        help=f"timeout of one API request (default {REQUEST_TIMEOUT:g})")
    return parser


def _where(seen: Sequence[Sighting]) -> str:
    if not seen:
        return ""
    more = f" and {len(seen) - 1} more" if len(seen) > 1 else ""
    return f" (in {seen[0]}{more})"


def _plural(count: int, word: str) -> str:
    return f"{count} {word}" if count == 1 else f"{count} {word}s"


def summarize(
    result: ScanResult, outcome: Plan, *, namespaces_given: bool, merging: bool = False
) -> list[str]:
    """The report for stderr: what was scanned and found, and every image left out and why."""
    lines = []
    scanned = _plural(len(result.namespaces), "namespace")
    if namespaces_given:
        scanned += f" ({', '.join(result.namespaces)})"
    kinds = ", ".join(f"{result.workloads[r.kind]} {r.kind}" for r in WORKLOADS)
    lines.append(f"scanned {scanned}: {_plural(sum(result.workloads.values()), 'workload')} "
                 f"({kinds})")
    counts = [_plural(len(outcome.added), "new rule")]
    if merging:
        counts.append(f"{outcome.present} already in the file")
    counts += [_plural(len(outcome.conflicts), "conflict"), f"{len(outcome.skipped)} skipped"]
    lines.append(f"found {_plural(outcome.images, 'image')}: {', '.join(counts)}")
    for resource in result.unserved:
        lines.append(f"note: the API server does not serve {resource.qualified}: none read")
    for item in outcome.skipped:
        lines.append(f"skipped {quote(item.image)}{_where(item.seen)}: {item.reason}")
    for conflict in outcome.conflicts:
        lines.append(
            f"conflict: {', '.join(conflict.dropped)}{_where(conflict.seen)} would also go to "
            f"{conflict.target}, which {conflict.kept} takes: left out; --keep-namespace keeps "
            "each source's namespace in the target name")
    lines.extend(f"note: {note}" for note in outcome.notes)
    return lines


def run_config(args: argparse.Namespace, environ: Mapping[str, str], err: IO[str]) -> bool:
    """`migrator config`. True when every image found has its rule (no conflict, no empty
    result). Raises ConfigError for bad input, ClusterError when the cluster cannot be read."""
    problems: list[str] = []
    repo = namespaces = None
    try:
        repo = parse_repo(args.repo)
    except ConfigError as exc:
        problems.extend(exc.problems)
    try:
        namespaces = parse_namespaces(args.namespaces)
    except ConfigError as exc:
        problems.extend(exc.problems)
    output: str = args.output
    to_stdout = output == "-"
    if to_stdout and args.merge:
        problems.append("--merge needs an output file, not '-'")
    elif not to_stdout:
        if os.path.isdir(output):
            problems.append(f"-o/--output {quote(output)}: is a directory")
        elif not os.path.isdir(os.path.dirname(os.path.abspath(output))):
            problems.append(f"-o/--output {quote(output)}: the directory does not exist")
        elif os.path.exists(output) and not (args.force or args.merge):
            problems.append(f"{output} exists: pass --force to overwrite it or --merge to add "
                            "the new images to it")
    if problems:
        raise ConfigError(problems)
    assert repo is not None
    existing: dict[str, Any] = {}
    existing_rules: list[Rule] = []
    if args.merge:
        existing, existing_rules = load_existing(output, repo=repo, environ=environ)

    connection = connect(args.kubeconfig, args.context, environ)
    with connection.api_client:
        print(f"reading {connection.host} ({connection.origin})", file=err, flush=True)
        if namespaces is not None:
            check_namespaces(connection.api_client, namespaces,
                             request_timeout=args.request_timeout)
        result = scan(connection.api_client, namespaces=namespaces, page_size=args.chunk_size,
                      request_timeout=args.request_timeout)

    outcome = plan(result.images, repo, keep_namespace=args.keep_namespace,
                   include_old_revisions=args.include_old_revisions,
                   existing=existing, existing_rules=existing_rules)
    for line in summarize(result, outcome, namespaces_given=namespaces is not None,
                          merging=bool(existing)):
        print(line, file=err)
    complete = not outcome.conflicts
    if not outcome.rules:
        print("no image to copy: nothing written", file=err)
        return False
    if args.merge and not outcome.added and existing:
        print(f"nothing new: {output} left as it was", file=err)
        return complete

    # The file must be one `migrator sync` accepts: check it with the same loader.
    registry, namespace = _defaults(repo, environ)
    try:
        parse_rules(outcome.rules, filename=output, default_registry=registry,
                    default_namespace=namespace)
    except ConfigError as exc:
        raise ConfigError([f"the rules made from the cluster do not load (a bug, please report "
                           f"it): {problem}" for problem in exc.problems]) from None
    text = render(outcome.rules, as_yaml=not to_stdout and is_yaml(output))
    if to_stdout:
        sys.stdout.write(text)
        sys.stdout.flush()
        return complete
    write_file(output, text, replace=args.force or args.merge)
    if args.merge and existing:
        print(f"merged into {output}: {len(existing)} existing "
              f"{'entry' if len(existing) == 1 else 'entries'} kept, "
              f"{len(outcome.added)} added", file=err)
        for source, target in outcome.added.items():
            print(f"added {source} -> {target}", file=err)
    else:
        print(f"wrote {_plural(len(outcome.rules), 'rule')} to {output}", file=err)
    return complete

