"""deploy/grafana/migrator.json asks only for what the workers export.

The exported names come from the metrics workers/health.py registers at import (a counter
exports `<name>_total`, a histogram `_bucket`, `_sum` and `_count`); the names each PromQL
expression asks for come from a small tokenizer that skips functions, aggregations, label
matchers, ranges and `by (...)`-style clauses. A renamed metric or label thus fails here
instead of leaving an empty panel.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from prometheus_client import REGISTRY
from prometheus_client.metrics import MetricWrapperBase

from workers import health

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "deploy" / "grafana" / "migrator.json"
SUFFIXES = {"counter": ("_total", "_created"), "gauge": ("",),
            "histogram": ("_bucket", "_sum", "_count", "_created")}
TARGET_LABELS = {"instance", "job"}  # what Prometheus adds to every scraped series
CLAUSES = {"by", "without", "on", "ignoring", "group_left", "group_right"}
KEYWORDS = {"bool", "and", "or", "unless", "offset", "atan2", "inf", "nan"}

TOKEN = re.compile(r"""
    (?P<string>"(?:\\.|[^"\\])*"|'(?:\\.|[^'\\])*'|`[^`]*`)
  | (?P<matchers>\{(?:"(?:\\.|[^"\\])*"|'(?:\\.|[^'\\])*'|[^{}"'])*\})
  | (?P<range>\[[^\]]*\])
  | (?P<duration>\d+(?:ms|[smhdwy])\b)
  | (?P<number>(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)
  | (?P<variable>\$\{?\w+\}?)
  | (?P<ident>[A-Za-z_:][\w:]*)
  | (?P<paren>[()])
  | (?P<operator>[-+*/%^,=!<>~@]+)
  | (?P<space>\s+)
""", re.X)
MATCHER = re.compile(
    r"""\s*(\w+)\s*(=~|!~|!=|=)\s*("(?:\\.|[^"\\])*"|'(?:\\.|[^'\\])*')\s*,?""")


def tokens(expr: str) -> list[tuple[str, str]]:
    found, position = [], 0
    while position < len(expr):
        match = TOKEN.match(expr, position)
        assert match is not None, f"cannot read {expr[position:]!r} in {expr!r}"
        kind = match.lastgroup
        assert kind is not None
        if kind != "space":
            found.append((kind, match.group()))
        position = match.end()
    return found


def matcher_labels(matchers: str) -> dict[str, str]:
    """`{a="x", b=~"y"}` → {"a": '="x"', "b": '=~"y"'}."""
    body, labels, position = matchers[1:-1], {}, 0
    while position < len(body):
        match = MATCHER.match(body, position)
        assert match is not None, f"cannot read matchers {matchers!r}"
        labels[match.group(1)] = match.group(2) + match.group(3)
        position = match.end()
    return labels


def selectors(expr: str) -> tuple[list[tuple[str, set[str]]], set[str]]:
    """The metric names an expression selects, each with the labels its matchers name, and
    the labels of its `by`/`without`/`on`/`ignoring`/`group_*` clauses."""
    found: list[tuple[str, set[str]]] = []
    grouping: set[str] = set()
    items = tokens(expr)
    i = 0
    while i < len(items):
        kind, text = items[i]
        following = items[i + 1] if i + 1 < len(items) else ("", "")
        if kind == "ident" and text in CLAUSES:
            if following == ("paren", "("):
                i += 2
                while items[i] != ("paren", ")"):
                    if items[i][0] == "ident":
                        grouping.add(items[i][1])
                    i += 1
        elif kind == "ident" and text.lower() in KEYWORDS:
            pass
        elif kind == "ident" and (following == ("paren", "(")
                                  or (following[0] == "ident" and following[1] in CLAUSES)):
            pass  # a function, or an aggregation (`sum by (x) (...)` too)
        elif kind == "ident":
            labels = set(matcher_labels(following[1])) if following[0] == "matchers" else set()
            found.append((text, labels))
            i += following[0] == "matchers"
        elif kind == "matchers":  # `{__name__="x"}` without a name in front
            labels = matcher_labels(text)
            name = re.fullmatch(r'="(\w+)"', labels.pop("__name__", ""))
            assert name is not None, f"a selector without a metric name in {expr!r}"
            found.append((name.group(1), set(labels)))
        i += 1
    return found, grouping


def exported() -> dict[str, set[str]]:
    """Every sample name workers/health.py exports, with the label names its series carry."""
    labelnames = {metric._name: set(metric._labelnames) for metric in vars(health).values()
                  if isinstance(metric, MetricWrapperBase)}
    families = {family.name: family.type for family in REGISTRY.collect()
                if family.name.startswith("migrator_")}
    assert set(families) == set(labelnames), "health.py's metrics are the registry's"
    return {name + suffix: labelnames[name] | ({"le"} if suffix == "_bucket" else set())
            for name, kind in families.items() for suffix in SUFFIXES[kind]}


def dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())


def panels(board: dict[str, Any]) -> list[dict[str, Any]]:
    flat = []
    for panel in board["panels"]:
        flat.append(panel)
        flat.extend(panel.get("panels", []))  # a collapsed row holds its panels
    return flat


def expressions(board: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(panel title, expr, legend) of every query."""
    return [(panel["title"], target["expr"], target.get("legendFormat", ""))
            for panel in panels(board) for target in panel.get("targets", [])]


def check(expr: str, names: dict[str, set[str]]) -> list[str]:
    """What `expr` asks for that no worker exports: metric names, and labels of matchers,
    clauses or legends that none of its metrics carries."""
    problems = []
    found, grouping = selectors(expr)
    if not found:
        problems.append("selects no metric")
    carried = set(TARGET_LABELS)
    for name, labels in found:
        if name not in names:
            problems.append(f"unknown metric {name}")
            continue
        carried |= names[name]
        problems += [f"{name} has no label {label}" for label in sorted(labels - names[name]
                                                                          - TARGET_LABELS)]
    problems += [f"no metric carries label {label}" for label in sorted(grouping - carried)]
    return problems


# -- the tokenizer itself ----------------------------------------------------------------


def test_the_tokenizer_finds_metrics_and_skips_everything_else():
    found, grouping = selectors(
        'histogram_quantile(0.9, sum by (le, task) (rate(a_bucket{task=~"x|y", b!="}"}'
        "[$__rate_interval] offset 5m))) / on (task) group_left sum without (c) (d_total) "
        "* 60 > bool 1e3 and label_replace(e, \"dst\", \"$1\", \"src\", \"(.*)\")")
    assert found == [("a_bucket", {"task", "b"}), ("d_total", set()), ("e", set())]
    assert grouping == {"le", "task", "c"}
    assert selectors('{__name__="f_total", g="1"}')[0] == [("f_total", {"g"})]
    assert selectors("sum(h) by (i)") == ([("h", set())], {"i"})


def test_the_check_catches_a_wrong_name_or_label():
    names = exported()
    assert check("sum(rate(migrator_bytes_copied_total[5m]))", names) == []
    assert check("rate(migrator_bytes_copied[5m])", names) == [
        "unknown metric migrator_bytes_copied"]  # a counter's samples end in _total
    assert check('migrator_registry_images_total{registry="x"}', names) == [
        "migrator_registry_images_total has no label registry"]
    assert check("sum by (pod) (migrator_tasks_in_progress)", names) == [
        "no metric carries label pod"]


def test_the_exported_names_are_the_samples_a_scrape_shows():
    from prometheus_client import generate_latest

    names = exported()
    scraped = set(re.findall(r"^(migrator_\w+?)(?:\{|\s)", generate_latest(REGISTRY).decode(),
                             re.MULTILINE))
    assert scraped and scraped <= set(names)
    assert {"migrator_bytes_copied_total", "migrator_registry_bytes_copied_total",
            "migrator_task_seconds_bucket", "migrator_tasks_in_progress"} <= set(names)


# -- the dashboard -----------------------------------------------------------------------


def test_every_expression_names_only_exported_metrics_and_labels():
    names = exported()
    board = dashboard()
    problems = []
    for title, expr, legend in expressions(board):
        found, grouping = selectors(expr)
        legend_labels = set(re.findall(r"\{\{\s*(\w+)\s*\}\}", legend))
        carried = grouping or set().union(TARGET_LABELS, *(names.get(name, set())
                                                          for name, _ in found))
        problems += [f"{title}: {expr}: {problem}" for problem in check(expr, names)]
        problems += [f"{title}: legend {{{{{label}}}}} is not a label of the result"
                     for label in sorted(legend_labels - carried)]
    assert problems == []


def test_template_variables_read_exported_labels():
    names = exported()
    variables = {variable["name"]: variable for variable in dashboard()["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    for name in ("source_registry", "target_registry"):
        query = variables[name]["query"]
        query = query["query"] if isinstance(query, dict) else query
        match = re.fullmatch(r"label_values\((?:(.+),\s*)?(\w+)\)", query)
        assert match is not None, query
        selector, label = match.groups()
        assert label == name
        assert selector is not None and check(selector, names) == []
        assert label in names[selectors(selector)[0][0][0]]
        assert variables[name]["includeAll"] and variables[name]["allValue"] == ".*"


def test_the_dashboard_shows_what_operators_asked_for():
    board = dashboard()
    queries = [re.sub(r"\s+", " ", expr) for _, expr, _ in expressions(board)]

    def shown(*parts: str) -> bool:
        return any(all(part in query for part in parts) for query in queries)

    assert shown("by (target_registry)", "rate(migrator_registry_bytes_copied_total")
    assert shown("outcome", "target_registry", "migrator_registry_images_total")
    assert shown("by (task, reason)", "migrator_failures_total")
    assert shown("reason", "migrator_registry_failures_total")
    assert shown("by (reason)", "migrator_retries_total")
    assert shown("by (instance)", "migrator_tasks_in_progress")
    for quantile in ("0.5", "0.9", "0.99"):
        assert shown(f"histogram_quantile({quantile},", "by (le, task)",
                     "migrator_task_seconds_bucket")
    # every family the workers export is on the dashboard, but the images of all registries:
    # the dashboard shows them per registry pair (migrator_registry_images)
    used = {re.sub(r"_(total|bucket|sum|count|created)$", "", name)
            for query in queries for name, _ in selectors(query)[0]}
    families = {family.name for family in REGISTRY.collect()
                if family.name.startswith("migrator_")}
    assert families - used == {"migrator_images"}


def test_the_dashboard_imports_into_grafana():
    board = dashboard()
    assert board["uid"] and board["title"] and board["schemaVersion"] >= 36
    assert board.get("id") is None  # Grafana assigns ids on import
    ids = [panel["id"] for panel in panels(board)]
    assert len(ids) == len(set(ids))
    for panel in panels(board):
        position = panel["gridPos"]
        assert position["x"] >= 0 and position["x"] + position["w"] <= 24
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        refs = [target["refId"] for target in panel["targets"]]
        assert refs and len(refs) == len(set(refs))
        for target in panel["targets"]:
            assert target["datasource"] == panel["datasource"]


def test_the_queries_of_the_docs_name_only_exported_metrics():
    text = (ROOT / "docs" / "metrics.md").read_text()
    queries = re.findall(r"```promql\n(.*?)```", text, re.DOTALL)
    assert len(queries) >= 5
    names = exported()
    assert {query.strip(): check(query, names) for query in queries} == {
        query.strip(): [] for query in queries}
