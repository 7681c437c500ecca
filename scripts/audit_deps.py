#!/usr/bin/env python3
"""Dependency audit: every distribution installed in this interpreter's environment, checked
against the public vulnerability data that can be reached from here.

Why not pip-audit alone: its PyPI service asks `/pypi/<name>/<version>/json`, and where that
answers 404 it skips each package as "not found on PyPI" and still reports "No known
vulnerabilities found" — a clean result that audited nothing. Its OSV service needs
api.osv.dev. This script says what it covered.

Sources, best first, per package:
1. OSV (`api.osv.dev/v1/querybatch`): exact for any installed version.
2. PyPI's release JSON (`/pypi/<name>/<version>/json`, its `vulnerabilities`): exact too.
3. PyPI's project JSON (`/pypi/<name>/json`): its `vulnerabilities` are those of the latest
   release only, so exact when the installed version is the latest, and silent otherwise:
   such a package is reported as NOT COVERED, never as clean.

Exit codes: 1 when a vulnerability is found (CI fails); 0 otherwise, with a loud warning when
a service was unreachable or packages stayed uncovered (an outage must not turn CI red);
`--strict` makes those 2. Only the standard library is used.
"""

from __future__ import annotations

import argparse
import json
import sys
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from importlib import metadata

OSV = "https://api.osv.dev/v1/querybatch"
PYPI = "https://pypi.org/pypi"
TIMEOUT = 15.0


class Unreachable(Exception):
    """No answer, or an answer that is not the service's (5xx, HTML from a proxy)."""


@dataclass
class Finding:
    name: str
    version: str
    source: str = ""  # where the verdict comes from; "" when not covered
    vulnerabilities: list[str] = field(default_factory=list)
    note: str = ""


def installed() -> list[tuple[str, str]]:
    """(name, version) of every distribution, without the project itself (installed from a
    local directory: it is not on PyPI under its name)."""
    found: dict[str, str] = {}
    for dist in metadata.distributions():
        name = dist.metadata["Name"]
        if not name:
            continue
        direct = dist.read_text("direct_url.json")
        if direct and json.loads(direct).get("url", "").startswith("file:"):
            continue
        found[name.lower().replace("_", "-")] = dist.version
    return sorted(found.items())


def _get_json(url: str, body: dict | None = None) -> dict | None:
    """The JSON answer, None on 404, Unreachable on anything else that is not an answer."""
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, headers={
        "Accept": "application/json", "Content-Type": "application/json",
        "User-Agent": "migrator-audit"})
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT) as answer:
            return json.loads(answer.read())
    except urllib.error.HTTPError as exc:
        if exc.code == 404:
            return None
        raise Unreachable(f"{url}: HTTP {exc.code}") from None
    except (urllib.error.URLError, OSError, ValueError) as exc:
        raise Unreachable(f"{url}: {type(exc).__name__}: {exc}") from None


def _live(vulnerabilities: list[dict] | None) -> list[str]:
    return sorted({v.get("id", "?") for v in vulnerabilities or [] if not v.get("withdrawn")})


def audit_osv(packages: list[tuple[str, str]]) -> list[Finding]:
    answer = _get_json(OSV, {"queries": [
        {"package": {"name": name, "ecosystem": "PyPI"}, "version": version}
        for name, version in packages]})
    if answer is None or len(answer.get("results", [])) != len(packages):
        raise Unreachable(f"{OSV}: unexpected answer")
    return [Finding(name, version, "osv", _live(result.get("vulns")))
            for (name, version), result in zip(packages, answer["results"], strict=True)]


def audit_pypi(name: str, version: str) -> Finding:
    release = _get_json(f"{PYPI}/{name}/{version}/json")
    if release is not None:
        return Finding(name, version, "pypi release", _live(release.get("vulnerabilities")))
    project = _get_json(f"{PYPI}/{name}/json")
    if project is None:
        return Finding(name, version, note="not on PyPI")
    latest = project.get("info", {}).get("version", "")
    if latest == version:
        return Finding(name, version, "pypi latest", _live(project.get("vulnerabilities")))
    known = _live(project.get("vulnerabilities"))
    note = f"installed {version}, latest {latest}: PyPI here only speaks of the latest"
    if known:
        note += f" (which has {', '.join(known)})"
    return Finding(name, version, note=note)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--strict", action="store_true",
                        help="exit 2 when a service is unreachable or a package not covered")
    parser.add_argument("--json", action="store_true", help="print the findings as JSON")
    args = parser.parse_args(argv)

    packages = installed()
    warnings: list[str] = []
    try:
        findings = audit_osv(packages)
    except Unreachable as exc:
        warnings.append(f"OSV unreachable ({exc}); falling back to PyPI's JSON API")
        findings = []
        with ThreadPoolExecutor(8) as pool:
            futures = [(name, version, pool.submit(audit_pypi, name, version))
                       for name, version in packages]
        for name, version, future in futures:
            try:
                findings.append(future.result())
            except Unreachable as error:
                findings.append(Finding(name, version, note=f"unreachable: {error}"))

    vulnerable = [f for f in findings if f.vulnerabilities]
    covered = [f for f in findings if f.source]
    uncovered = [f for f in findings if not f.source]
    if args.json:
        print(json.dumps([f.__dict__ for f in findings], indent=2))
    for finding in vulnerable:
        print(f"VULNERABLE {finding.name} {finding.version}: "
              f"{', '.join(finding.vulnerabilities)} ({finding.source})")
    for finding in uncovered:
        print(f"not covered: {finding.name} {finding.version}: {finding.note}")
    print(f"dependency audit: {len(findings)} distributions, {len(covered)} checked "
          f"({', '.join(sorted({f.source for f in covered})) or 'no source'}), "
          f"{len(uncovered)} not covered, {len(vulnerable)} vulnerable")
    if uncovered:
        warnings.append(f"{len(uncovered)} of {len(findings)} distributions could not be "
                        "checked: this is not a clean bill for them")
    for warning in warnings:
        print(f"WARNING: dependency audit: {warning}", file=sys.stderr)
    if vulnerable:
        return 1
    return 2 if args.strict and (uncovered or warnings) else 0


if __name__ == "__main__":
    sys.exit(main())
