"""`migrator config`: the images a Kubernetes cluster runs, written as an images file.

Three steps, each usable on its own:

* `connect()` finds the credentials as kubectl does (`-k`, then `$KUBECONFIG`, then
  `~/.kube/config`, then the pod's service account) and returns a `kubernetes` `ApiClient`.
* `scan(api_client)` pages through Pods and the pod templates of Deployments, StatefulSets,
  DaemonSets, ReplicaSets, Jobs and CronJobs, and records every image with where it was seen.
* `plan(images, repo)` turns those images into rules: references normalised as `docker pull`
  reads them, duplicates folded, conflicts and skipped images reported, never overwritten.

One module a step (`connect`, `scan`, `plan`); no command-line parsing here: `migrator
config` (migrator/commands/config.py) calls them, and so can tests and other programs.
"""

from migrator.kube.connect import Connection, connect, find_kubeconfig, kubeconfig_contexts
from migrator.kube.plan import (
    Conflict,
    Plan,
    Skipped,
    check_loadable,
    is_yaml,
    load_existing,
    parse_namespaces,
    parse_repo,
    plan,
    plural,
    render,
    summarize,
    target_repository,
    write_file,
)
from migrator.kube.scan import (
    NAMESPACES,
    PAGE_SIZE,
    REQUEST_TIMEOUT,
    WORKLOADS,
    Permission,
    Resource,
    ScanResult,
    Sighting,
    check_namespaces,
    images_of,
    scan,
)

__all__ = [
    "NAMESPACES", "PAGE_SIZE", "REQUEST_TIMEOUT", "WORKLOADS", "Conflict", "Connection",
    "Permission", "Plan", "Resource", "ScanResult", "Sighting", "Skipped", "check_loadable",
    "check_namespaces",
    "connect", "find_kubeconfig", "images_of", "is_yaml", "kubeconfig_contexts",
    "load_existing", "parse_namespaces", "parse_repo", "plan", "plural", "render", "scan",
    "summarize", "target_repository", "write_file",
]
