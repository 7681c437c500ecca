"""Harbor's projects API, the one namespace API migrator speaks: whether a registry is Harbor,
whether a project exists, and creating one (auth file `create_namespace: true`).

Harbor does not create a project on push: a push into a missing one is refused with a 401 that
reads like a wrong password. Its REST API (`/api/v2.0`, documented in Harbor's swagger.yaml,
api/v2.0/swagger.yaml in goharbor/harbor) answers:

- `GET /api/v2.0/ping`: `Pong`, without authentication (how a registry is told to be Harbor);
- `HEAD /api/v2.0/projects?project_name=X`: 200 when the project exists, 404 when not;
- `POST /api/v2.0/projects` `{"project_name": X, "public": false}`: 201 created, 409 when it
  exists already, 401/403 when the account may not create projects.

The API takes Basic credentials (the auth file's user and password), never the registry's
bearer tokens.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING
from urllib.parse import quote

import requests

from migrator.errors import RegistryError, TransportError

if TYPE_CHECKING:
    from migrator.registry.client import RegistryClient

log = logging.getLogger(__name__)

API = "/api/v2.0"


def _call(client: RegistryClient, method: str, path: str, *,
          json_body: dict | None = None) -> requests.Response:
    url = client.url(f"{API}{path}")
    credentials = client.credentials
    auth = None
    if credentials.username and credentials.password and not credentials.identity_token:
        auth = (credentials.username, credentials.password.get_secret_value())
    try:
        with client.throttle.request(client.registry, client.limits):
            response = client.session.request(
                method, url, json=json_body, auth=auth, timeout=client.timeout,
                verify=client.verify, allow_redirects=False)
    except (requests.ConnectionError, requests.Timeout) as exc:
        raise TransportError(f"{method} {url.split('?', 1)[0]}: {type(exc).__name__}") from None
    except requests.RequestException as exc:
        raise RegistryError(f"{client.registry}: {type(exc).__name__}", method=method,
                            url=url.split("?", 1)[0]) from None
    response.close()
    return response


def is_harbor(client: RegistryClient) -> bool:
    """Whether the registry answers Harbor's ping (`Pong`, no credentials needed)."""
    response = _call(client, "GET", "/ping")
    return response.status_code == 200 and response.text.strip().strip('"') == "Pong"


def project_exists(client: RegistryClient, project: str) -> bool | None:
    """True or False as Harbor answers, None when it would not say (401, 403, 5xx)."""
    response = _call(client, "HEAD", f"/projects?project_name={quote(project)}")
    return {200: True, 404: False}.get(response.status_code)


def ensure_project(client: RegistryClient, project: str) -> bool:
    """Create the private project `project` unless it exists; True when it was created.

    An account that may not create projects still gets on when the project is there."""
    response = _call(client, "POST", "/projects",
                     json_body={"project_name": project, "public": False})
    if response.status_code == 201:
        log.info("%s: created the Harbor project %r (create_namespace)", client.registry,
                 project)
        return True
    if response.status_code == 409:
        return False
    if response.status_code in (401, 403) and project_exists(client, project):
        return False
    who = (f"user {client.credentials.username!r}" if client.credentials.username
           else "anonymous access")
    raise RegistryError(
        f"{client.registry}: Harbor would not create the project {project!r} for {who} "
        f"(create_namespace): create {project!r} on the registry first, or give an account "
        "that may create projects", method="POST", url=f"{client.base_url}{API}/projects",
        status=response.status_code)
