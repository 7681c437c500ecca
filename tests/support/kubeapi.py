"""A fake Kubernetes API server, for testing `migrator config` through the real client.

No API server can run on the test machines, so this one serves what the real one would for
the reads `migrator config` makes, over HTTPS with a CA made here:

* list endpoints, cluster-wide and per namespace: `/api/v1/pods`,
  `/api/v1/namespaces/{ns}/pods`, `/apis/apps/v1/deployments`,
  `/apis/batch/v1/namespaces/{ns}/cronjobs`, ... and `/api/v1/namespaces` (+ GET one);
* list bodies shaped as the API server writes them: `kind: PodList`, `apiVersion`,
  `metadata.resourceVersion`, items without their own kind/apiVersion, `limit` honoured with
  an opaque `metadata.continue` token and `remainingItemCount`; a 410 `Expired` on request;
* bearer tokens checked (401 `Status` for an unknown one) and RBAC-like denials: a 403
  `Status` body worded as the real authorizer words it, per token and resource.

Objects are built by the helpers below (`pod`, `deployment`, ...) with the fields real objects
carry (uid, resourceVersion, ownerReferences, status...). Like the other support modules,
this one never imports the product.
"""

from __future__ import annotations

import base64
import hashlib
import json
import socket
import ssl
import threading
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import yaml

from tests.support.tls import make_server_tls

CREATED = "2024-05-14T09:12:31Z"


@dataclass(frozen=True)
class Kind:
    kind: str
    group: str  # "" for core
    plural: str
    namespaced: bool = True

    @property
    def api_version(self) -> str:
        return f"{self.group}/v1" if self.group else "v1"


KINDS = {
    k.plural: k
    for k in (
        Kind("Namespace", "", "namespaces", namespaced=False),
        Kind("Pod", "", "pods"),
        Kind("Deployment", "apps", "deployments"),
        Kind("StatefulSet", "apps", "statefulsets"),
        Kind("DaemonSet", "apps", "daemonsets"),
        Kind("ReplicaSet", "apps", "replicasets"),
        Kind("Job", "batch", "jobs"),
        Kind("CronJob", "batch", "cronjobs"),
    )
}
BY_KIND = {k.kind: k for k in KINDS.values()}


# -- objects -----------------------------------------------------------------------------------


def _uid(*parts: str) -> str:
    return str(uuid.UUID(hashlib.md5("/".join(parts).encode()).hexdigest()))


def _metadata(kind: str, namespace: str | None, name: str, **extra: Any) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name}
    if namespace is not None:
        meta["namespace"] = namespace
    meta.update({
        "uid": _uid(kind, namespace or "", name),
        "resourceVersion": "0",  # set when added to a server
        "creationTimestamp": CREATED,
        "labels": {"app.kubernetes.io/name": name},
    })
    meta.update(extra)
    return meta


def _owner(kind: str, namespace: str, name: str) -> dict[str, Any]:
    return {
        "apiVersion": BY_KIND[kind].api_version,
        "kind": kind,
        "name": name,
        "uid": _uid(kind, namespace, name),
        "controller": True,
        "blockOwnerDeletion": True,
    }


def container(name: str, image: str) -> dict[str, Any]:
    """A container as the API server returns it, defaults filled in."""
    return {
        "name": name,
        "image": image,
        "imagePullPolicy": "Always" if image.endswith(":latest") or ":" not in image
        else "IfNotPresent",
        "ports": [{"containerPort": 8080, "protocol": "TCP"}],
        "resources": {"requests": {"cpu": "100m", "memory": "64Mi"}},
        "terminationMessagePath": "/dev/termination-log",
        "terminationMessagePolicy": "File",
    }


Containers = Sequence[tuple[str, str]]  # (name, image)


def _pod_spec(containers: Containers, init: Containers = ()) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "containers": [container(n, i) for n, i in containers],
        "restartPolicy": "Always",
        "terminationGracePeriodSeconds": 30,
        "dnsPolicy": "ClusterFirst",
        "serviceAccountName": "default",
        "securityContext": {},
        "schedulerName": "default-scheduler",
    }
    if init:
        spec["initContainers"] = [container(n, i) for n, i in init]
    return spec


def _template(name: str, containers: Containers, init: Containers) -> dict[str, Any]:
    return {
        "metadata": {"creationTimestamp": None, "labels": {"app.kubernetes.io/name": name}},
        "spec": _pod_spec(containers, init),
    }


def namespace(name: str) -> dict[str, Any]:
    return {
        "kind": "Namespace", "apiVersion": "v1",
        "metadata": _metadata("Namespace", None, name,
                              labels={"kubernetes.io/metadata.name": name}),
        "spec": {"finalizers": ["kubernetes"]},
        "status": {"phase": "Active"},
    }


def pod(
    ns: str, name: str, containers: Containers, *, init: Containers = (),
    ephemeral: Containers = (), owner: tuple[str, str] | None = None,
) -> dict[str, Any]:
    """A running Pod; its status reports resolved image names, as the kubelet does."""
    extra = {"ownerReferences": [_owner(owner[0], ns, owner[1])]} if owner else {}
    spec = _pod_spec(containers, init)
    spec["nodeName"] = "node-1"
    if ephemeral:
        spec["ephemeralContainers"] = [
            {**container(n, i), "targetContainerName": containers[0][0]} for n, i in ephemeral
        ]
    statuses = [
        {
            "name": n, "ready": True, "restartCount": 0, "started": True,
            "state": {"running": {"startedAt": CREATED}},
            "image": i if "/" in i.split(":")[0] else f"docker.io/library/{i}",
            "imageID": "docker.io/library/x@sha256:" + hashlib.sha256(i.encode()).hexdigest(),
            "containerID": "containerd://" + hashlib.sha256(name.encode()).hexdigest(),
        }
        for n, i in containers
    ]
    return {
        "kind": "Pod", "apiVersion": "v1",
        "metadata": _metadata("Pod", ns, name, **extra),
        "spec": spec,
        "status": {"phase": "Running", "hostIP": "10.0.0.11", "podIP": "10.244.1.7",
                   "qosClass": "Burstable", "startTime": CREATED,
                   "containerStatuses": statuses},
    }


def deployment(
    ns: str, name: str, containers: Containers, *, init: Containers = (), replicas: int = 1
) -> dict[str, Any]:
    return {
        "kind": "Deployment", "apiVersion": "apps/v1",
        "metadata": _metadata("Deployment", ns, name, generation=3,
                              annotations={"deployment.kubernetes.io/revision": "3"}),
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app.kubernetes.io/name": name}},
            "template": _template(name, containers, init),
            "strategy": {"type": "RollingUpdate",
                         "rollingUpdate": {"maxUnavailable": "25%", "maxSurge": "25%"}},
            "revisionHistoryLimit": 10,
            "progressDeadlineSeconds": 600,
        },
        "status": {"observedGeneration": 3, "replicas": replicas, "updatedReplicas": replicas,
                   "readyReplicas": replicas, "availableReplicas": replicas},
    }


def statefulset(ns: str, name: str, containers: Containers, *, replicas: int = 1) -> dict:
    return {
        "kind": "StatefulSet", "apiVersion": "apps/v1",
        "metadata": _metadata("StatefulSet", ns, name, generation=1),
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app.kubernetes.io/name": name}},
            "template": _template(name, containers, ()),
            "serviceName": name,
            "podManagementPolicy": "OrderedReady",
            "updateStrategy": {"type": "RollingUpdate", "rollingUpdate": {"partition": 0}},
            "volumeClaimTemplates": [{
                "apiVersion": "v1", "kind": "PersistentVolumeClaim",
                "metadata": {"name": "data", "creationTimestamp": None},
                "spec": {"accessModes": ["ReadWriteOnce"],
                         "resources": {"requests": {"storage": "1Gi"}}},
                "status": {"phase": "Pending"},
            }],
        },
        "status": {"observedGeneration": 1, "replicas": replicas, "readyReplicas": replicas,
                   "currentRevision": f"{name}-7b9c", "updateRevision": f"{name}-7b9c"},
    }


def daemonset(ns: str, name: str, containers: Containers) -> dict[str, Any]:
    return {
        "kind": "DaemonSet", "apiVersion": "apps/v1",
        "metadata": _metadata("DaemonSet", ns, name, generation=1),
        "spec": {
            "selector": {"matchLabels": {"app.kubernetes.io/name": name}},
            "template": _template(name, containers, ()),
            "updateStrategy": {"type": "RollingUpdate",
                               "rollingUpdate": {"maxUnavailable": 1, "maxSurge": 0}},
            "revisionHistoryLimit": 10,
        },
        "status": {"currentNumberScheduled": 1, "numberMisscheduled": 0,
                   "desiredNumberScheduled": 1, "numberReady": 1, "observedGeneration": 1},
    }


def replicaset(
    ns: str, name: str, containers: Containers, *, replicas: int = 1,
    deployment: str | None = None,
) -> dict[str, Any]:
    """A ReplicaSet, owned by `deployment` when given (replicas 0: a past revision)."""
    extra = {"ownerReferences": [_owner("Deployment", ns, deployment)]} if deployment else {}
    return {
        "kind": "ReplicaSet", "apiVersion": "apps/v1",
        "metadata": _metadata("ReplicaSet", ns, name, generation=1, **extra),
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app.kubernetes.io/name": name}},
            "template": _template(name, containers, ()),
        },
        "status": {"replicas": replicas, "observedGeneration": 1},
    }


def job(
    ns: str, name: str, containers: Containers, *, cronjob: str | None = None
) -> dict[str, Any]:
    extra = {"ownerReferences": [_owner("CronJob", ns, cronjob)]} if cronjob else {}
    template = _template(name, containers, ())
    template["spec"]["restartPolicy"] = "Never"
    return {
        "kind": "Job", "apiVersion": "batch/v1",
        "metadata": _metadata("Job", ns, name, **extra),
        "spec": {"parallelism": 1, "completions": 1, "backoffLimit": 6,
                 "completionMode": "NonIndexed", "suspend": False, "template": template},
        "status": {"startTime": CREATED, "completionTime": CREATED, "succeeded": 1},
    }


def cronjob(ns: str, name: str, containers: Containers, *, init: Containers = ()) -> dict:
    template = _template(name, containers, init)
    template["spec"]["restartPolicy"] = "OnFailure"
    return {
        "kind": "CronJob", "apiVersion": "batch/v1",
        "metadata": _metadata("CronJob", ns, name),
        "spec": {
            "schedule": "0 3 * * *",
            "concurrencyPolicy": "Forbid",
            "suspend": False,
            "successfulJobsHistoryLimit": 3,
            "failedJobsHistoryLimit": 1,
            "jobTemplate": {"metadata": {"creationTimestamp": None},
                            "spec": {"backoffLimit": 2, "template": template}},
        },
        "status": {"lastScheduleTime": CREATED},
    }


def status(code: int, reason: str, message: str, details: Mapping[str, Any] | None = None,
           continue_token: str | None = None) -> dict[str, Any]:
    """A `Status` body, as the API server sends with every error."""
    body: dict[str, Any] = {
        "kind": "Status", "apiVersion": "v1",
        "metadata": {"continue": continue_token} if continue_token else {},
        "status": "Failure", "message": message, "reason": reason, "code": code,
    }
    if details:
        body["details"] = dict(details)
    return body


# -- TLS ---------------------------------------------------------------------------------------


def make_tls(workdir: Path) -> tuple[bytes, Path, Path]:
    """A throwaway CA and a server certificate for 127.0.0.1/localhost: (ca_pem, cert, key)."""
    tls = make_server_tls(workdir, "apiserver", ca_name="kubernetes-ca",
                          dns_names=("localhost", "kubernetes.default.svc"))
    return tls.ca_pem, tls.cert_path, tls.key_path


# -- the server --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    query: dict[str, str]
    user: str | None  # None: refused with 401


@dataclass
class FakeKubeAPI:
    """Start with `FakeKubeAPI.start(workdir)`; `stop()` at the end.

    `tokens` maps bearer tokens to user names; `forbid(token, plural, verb)` denies a verb
    on a resource (in every namespace) to that token's user.
    """

    workdir: Path
    tokens: dict[str, str] = field(default_factory=dict)
    objects: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    requests: list[Request] = field(default_factory=list)
    answers: list[tuple[str, int]] = field(default_factory=list)  # (path, status) sent
    expire_continue: int = 0  # this many continued lists get 410 Expired
    unserved: set[str] = field(default_factory=set)  # plurals answered 404, as by old servers
    _denied: set[tuple[str, str, str]] = field(default_factory=set)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _version: int = 1000
    ca_pem: bytes = b""
    _server: ThreadingHTTPServer | None = None
    _thread: threading.Thread | None = None

    @classmethod
    def start(cls, workdir: Path, tokens: Mapping[str, str] | None = None) -> FakeKubeAPI:
        api = cls(workdir, dict(tokens or {}))
        api.ca_pem, cert, key = make_tls(workdir)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert, key)
        api._server = _Server(("127.0.0.1", 0), _handler(api), context)
        api._thread = threading.Thread(target=api._server.serve_forever, args=(0.05,),
                                       daemon=True)
        api._thread.start()
        return api

    @property
    def port(self) -> int:
        assert self._server is not None
        return self._server.server_address[1]

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def add(self, *objects: dict[str, Any]) -> None:
        with self._lock:
            for obj in objects:
                self._version += 1
                obj["metadata"]["resourceVersion"] = str(self._version)
                self.objects.setdefault(BY_KIND[obj["kind"]].plural, []).append(obj)

    def forbid(self, token: str, plural: str, verb: str = "list") -> None:
        self._denied.add((token, plural, verb))

    def lists(self, plural: str) -> list[Request]:
        """The list requests made for a resource (any scope)."""
        return [r for r in self.requests if r.path.rstrip("/").endswith("/" + plural)]

    def write_kubeconfig(
        self, path: Path, contexts: Mapping[str, str], *, current: str | None = None,
        ca_pem: bytes | None = None, server: str | None = None,
    ) -> Path:
        """A kubeconfig with one context per (name, token), all on this server."""
        ca = base64.b64encode(ca_pem if ca_pem is not None else self.ca_pem).decode()
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "preferences": {},
            "clusters": [{"name": "fake", "cluster": {
                "server": server or self.url, "certificate-authority-data": ca}}],
            "users": [{"name": f"{name}-user", "user": {"token": token}}
                      for name, token in contexts.items()],
            "contexts": [{"name": name, "context": {
                "cluster": "fake", "user": f"{name}-user", "namespace": "default"}}
                for name in contexts],
            "current-context": current or next(iter(contexts)),
        }
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        return path

    # -- serving ---------------------------------------------------------------------------

    def _items(self, plural: str, ns: str | None) -> list[dict[str, Any]]:
        items = [o for o in self.objects.get(plural, [])
                 if ns is None or o["metadata"].get("namespace") == ns]
        return sorted(items, key=_key)

    def serve_list(self, kind: Kind, ns: str | None, query: Mapping[str, str]
                   ) -> tuple[int, dict[str, Any]]:
        items = self._items(kind.plural, ns)
        start = ""
        token = query.get("continue")
        if token:
            try:
                decoded = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
                start = decoded["start"]
            except (ValueError, KeyError, TypeError):
                return 400, status(400, "BadRequest",
                                   "continue key is not valid: illegal base64 data")
            with self._lock:
                expire = self.expire_continue > 0
                self.expire_continue -= expire
            if expire:
                return 410, status(
                    410, "Expired",
                    "The provided continue parameter is too old to display a consistent list "
                    "result. You can start a new list without the continue parameter, or use "
                    "the continue token in this response to retrieve the remainder of the "
                    "results.", continue_token=token)
        items = [o for o in items if _key(o) >= start]
        metadata: dict[str, Any] = {"resourceVersion": str(self._version)}
        limit = int(query.get("limit") or 0)
        if limit and len(items) > limit:
            page, rest = items[:limit], items[limit:]
            metadata["continue"] = base64.urlsafe_b64encode(json.dumps(
                {"v": "meta.k8s.io/v1", "rv": self._version, "start": _key(rest[0])}
            ).encode()).decode().rstrip("=")
            metadata["remainingItemCount"] = len(rest)
            items = page
        # Items of a typed list carry no kind/apiVersion of their own.
        body_items = [{k: v for k, v in o.items() if k not in ("kind", "apiVersion")}
                      for o in items]
        return 200, {"kind": f"{kind.kind}List", "apiVersion": kind.api_version,
                     "metadata": metadata, "items": body_items}


def _key(obj: Mapping[str, Any]) -> str:
    meta = obj["metadata"]
    return f"{meta.get('namespace', '')}/{meta['name']}"


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 64

    def __init__(self, address: tuple[str, int], handler: type, context: ssl.SSLContext) -> None:
        super().__init__(address, handler)
        self.context = context

    def get_request(self) -> tuple[Any, Any]:
        # The TLS handshake happens in the handler's thread, on the first read, so that a
        # client refusing the certificate cannot stall the accept loop.
        sock, address = self.socket.accept()
        # Headers and body go out in separate writes: without NODELAY each response would
        # wait out the client's delayed ACK (~40 ms).
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return self.context.wrap_socket(sock, server_side=True,
                                        do_handshake_on_connect=False), address

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # handshakes refused on purpose by some tests: nothing worth printing


def _route(path: str) -> tuple[Kind, str | None, str | None] | None:
    """(kind, namespace, name) for a path this server knows, else None."""
    parts = [unquote(p) for p in path.strip("/").split("/")]
    if parts[:2] == ["api", "v1"]:
        rest, group = parts[2:], ""
    elif len(parts) >= 3 and parts[0] == "apis" and parts[2] == "v1":
        rest, group = parts[3:], parts[1]
    else:
        return None
    ns = name = None
    if len(rest) >= 3 and rest[0] == "namespaces":
        ns, rest = rest[1], rest[2:]
    if group == "" and len(rest) == 2 and rest[0] == "namespaces":  # GET one namespace
        rest, name = rest[:1], rest[1]
    if len(rest) != 1 or rest[0] not in KINDS:
        return None
    kind = KINDS[rest[0]]
    if kind.group != group or (ns is not None and not kind.namespaced):
        return None
    return kind, ns, name


def _handler(api: FakeKubeAPI) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: object) -> None:  # noqa: A002
            pass

        def reply(self, code: int, body: Mapping[str, Any]) -> None:
            data = json.dumps(body).encode()
            with api._lock:
                api.answers.append((urlsplit(self.path).path, code))
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.send_header("Audit-Id", str(uuid.uuid4()))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:  # noqa: N802
            parts = urlsplit(self.path)
            query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
            header = self.headers.get("Authorization", "")
            token = header[7:] if header.lower().startswith("bearer ") else None
            user = api.tokens.get(token) if token else None
            with api._lock:
                api.requests.append(Request("GET", parts.path, query, user))
            if user is None:
                self.reply(401, status(401, "Unauthorized", "Unauthorized"))
                return
            route = _route(parts.path)
            if route is None or route[0].plural in api.unserved:
                self.reply(404, status(404, "NotFound",
                                       "the server could not find the requested resource"))
                return
            kind, ns, name = route
            verb = "get" if name else "list"
            if (token, kind.plural, verb) in api._denied:
                group = f' in API group "{kind.group}"'
                where = f' in the namespace "{ns or name}"' if (ns or name) else \
                    " at the cluster scope"
                subject = f'{kind.plural}.{kind.group}' if kind.group else kind.plural
                if name:
                    subject = f'{subject} "{name}"'
                self.reply(403, status(
                    403, "Forbidden",
                    f'{subject} is forbidden: User "{user}" cannot {verb} resource '
                    f'"{kind.plural}"{group}{where}',
                    {"name": name, "group": kind.group, "kind": kind.plural} if name
                    else {"group": kind.group, "kind": kind.plural}))
                return
            if name:
                found = [o for o in api.objects.get(kind.plural, [])
                         if o["metadata"]["name"] == name]
                if found:
                    self.reply(200, found[0])
                else:
                    self.reply(404, status(404, "NotFound", f'{kind.plural} "{name}" not found',
                                           {"name": name, "kind": kind.plural}))
                return
            self.reply(*api.serve_list(kind, ns, query))

    return Handler


def names(objects: Iterable[Mapping[str, Any]]) -> list[str]:
    return [o["metadata"]["name"] for o in objects]
