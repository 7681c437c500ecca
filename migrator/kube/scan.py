"""Reading a cluster: every image its workloads name, with where it was seen.

`scan(api_client)` pages through Pods and the pod templates of Deployments, StatefulSets,
DaemonSets, ReplicaSets, Jobs and CronJobs. Lists are read as raw JSON
(`_preload_content=False`) rather than as the client's models: a 10,000-pod list builds
millions of model objects, and a model refuses fields newer than the client. The `kubernetes`
package is imported inside the functions that need it: it takes a second or two to import.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from migrator.documents import quote
from migrator.errors import (
    ClusterError,
    ClusterForbidden,
    ClusterUnauthorized,
    ClusterUnreachable,
    ConfigError,
)

if TYPE_CHECKING:
    from kubernetes.client import ApiClient


RBAC_MANIFEST = "deploy/kubernetes/rbac-config.yaml"
PAGE_SIZE = 500  # kubectl's --chunk-size default
REQUEST_TIMEOUT = 30.0
MAX_LIST_RESTARTS = 3


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
