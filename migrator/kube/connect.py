"""Finding a cluster's credentials as kubectl does: `-k`, then `$KUBECONFIG`, then
`~/.kube/config`, then the pod's service account; `connect()` returns a `kubernetes`
`ApiClient`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from migrator.documents import quote
from migrator.errors import ConfigError

if TYPE_CHECKING:
    from kubernetes.client import ApiClient


SERVICE_ACCOUNT_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"


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
_KUBECONFIG_ERRORS = (OSError, KeyError, TypeError, AttributeError, ValueError)


def connect(
    kubeconfig: str | None,
    context: str | None,
    environ: Mapping[str, str],
    *,
    service_account_dir: str = SERVICE_ACCOUNT_DIR,
) -> Connection:
    """An ApiClient for the chosen kubeconfig and context, or for the pod's service account."""
    import yaml
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
    except (ConfigException, yaml.YAMLError, *_KUBECONFIG_ERRORS) as exc:
        raise ConfigError(f"kubeconfig {path}, context {quote(chosen)}: {_one_line(exc)}"
                          ) from None
    return Connection(api_client, f"context {quote(chosen)} of {path}")


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())


def kubeconfig_contexts(path: str) -> tuple[list[str], str | None]:
    """The context names of a kubeconfig (several files joined by os.pathsep, merged as
    kubectl merges them: the first file to name a context or a current-context wins)."""
    import yaml  # PyYAML loads only for `migrator config`, not for every command

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
