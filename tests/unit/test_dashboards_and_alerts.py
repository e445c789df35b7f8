"""deploy/grafana and deploy/prometheus name only what docs/metrics.md catalogues, and the alert rules hold.

Every PromQL expression (dashboard targets, dashboard variable queries, alert rules) is tokenized; each metric it
names must be a row of the catalogue table (a histogram by its ``_bucket``/``_sum``/``_count`` series; ``up`` and
``target_info`` come from the scrape), and each label it selects or groups by must be one the catalogue gives those
metrics, or ``job``/``instance``/``le``/``quantile``. ``promtool`` (``make promtool``) checks the rules, runs their
unit tests and parses the dashboards' expressions; those tests skip when it is not installed.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
CATALOGUE = ROOT / "docs" / "metrics.md"
DASHBOARDS = sorted((ROOT / "deploy" / "grafana").glob("*.json"))
ALERTS = ROOT / "deploy" / "prometheus" / "syncgov-alerts.yml"
ALERT_TESTS = ROOT / "deploy" / "prometheus" / "syncgov-alerts.test.yml"

# Series every scrape adds, and the labels every series (or every histogram, every summary-like gauge) carries.
SCRAPE_METRICS = {"up": frozenset[str](), "target_info": frozenset[str]()}
ALWAYS_LABELS = frozenset({"job", "instance", "le", "quantile"})
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")

# PromQL's functions and aggregation operators (Prometheus 2.x and 3.x), and its keywords.
FUNCTIONS = frozenset(
    """
    abs absent absent_over_time acos acosh asin asinh atan atanh avg_over_time ceil changes clamp clamp_max clamp_min
    cos cosh count_over_time day_of_month day_of_week day_of_year days_in_month deg delta deriv
    double_exponential_smoothing exp floor histogram_avg histogram_count histogram_fraction histogram_quantile
    histogram_stddev histogram_stdvar histogram_sum holt_winters hour idelta increase info irate label_join
    label_replace last_over_time ln log10 log2 mad_over_time max_over_time min_over_time minute month predict_linear
    present_over_time pi quantile_over_time rad rate resets round scalar sgn sin sinh sort sort_by_label
    sort_by_label_desc sort_desc sqrt stddev_over_time stdvar_over_time sum_over_time tan tanh time timestamp vector
    year sum min max avg group stddev stdvar count count_values bottomk topk quantile limitk limit_ratio
    """.split()  # noqa: SIM905
)
KEYWORDS = frozenset(
    "by without on ignoring group_left group_right bool offset and or unless atan2 inf nan start end".split()  # noqa: SIM905
)
GROUPING = frozenset({"by", "without", "on", "ignoring", "group_left", "group_right"})
MATCH_OPERATORS = ("=~", "!~", "!=", "=")

TOKEN = re.compile(
    r"""
      (?P<space>\s+)
    | (?P<string>"(?:\\.|[^"\\])*"|'(?:\\.|[^'\\])*'|`[^`]*`)
    | (?P<variable>\$\{[^}]*\}|\$\w+|\[\[\w+\]\])
    | (?P<number>(?:0x[0-9a-fA-F]+|\d+(?:\.\d*)?(?:[eE][+-]?\d+)?|\.\d+)[a-zA-Z]*(?:\d+[a-zA-Z]+)*)
    | (?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)
    | (?P<op>=~|!~|!=|==|<=|>=|[-+*/%^<>=(){}\[\],:@])
    """,
    re.VERBOSE,
)


@dataclass
class Names:
    """What one PromQL expression names."""

    metrics: set[str] = field(default_factory=set)
    selected: set[tuple[str, str]] = field(default_factory=set)  # (metric, label) inside metric{...}
    grouped: set[str] = field(default_factory=set)  # labels of by/without/on/ignoring/group_*, bare {...}
    unknown_functions: set[str] = field(default_factory=set)


def tokens(expr: str) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    at = 0
    while at < len(expr):
        found = TOKEN.match(expr, at)
        if found is None:
            raise ValueError(f"cannot read PromQL at {expr[at:]!r}")
        kind = found.lastgroup
        assert kind is not None
        if kind != "space":
            out.append((kind, found.group()))
        at = found.end()
    return out


def promql_names(expr: str) -> Names:
    """The metrics and labels an expression names: a small tokenizer, not a parser, but strict about identifiers.

    Strings and Grafana variables are dropped, range and subquery brackets skipped; an identifier is a label inside
    ``{...}`` and inside the parentheses after a grouping keyword, a function when it is one (or when a parenthesis
    follows: then an unknown one), a keyword, or else a metric name.
    """
    names = Names()
    toks = [t for t in tokens(expr) if t[0] != "variable"]
    i = 0
    metric = ""  # the metric whose {...} is open, "" for a bare selector
    in_braces = in_brackets = False
    grouping_depth = -1  # the parenthesis depth of an open grouping list
    depth = 0
    while i < len(toks):
        kind, text = toks[i]
        following = toks[i + 1][1] if i + 1 < len(toks) else ""
        if in_brackets:
            in_brackets = text != "]"
        elif in_braces:
            if text == "}":
                in_braces = False
            elif kind == "name":
                if metric:
                    names.selected.add((metric, text))
                else:
                    names.grouped.add(text)
        elif text == "[":
            in_brackets = True
        elif text == "{":
            in_braces = True
        elif text == "(":
            depth += 1
        elif text == ")":
            if depth == grouping_depth:
                grouping_depth = -1
            depth -= 1
        elif kind == "name" and grouping_depth >= 0:
            names.grouped.add(text)
        elif kind == "name" and text in GROUPING:
            if following == "(":
                grouping_depth = depth + 1
        elif kind == "name" and (text in FUNCTIONS or text in KEYWORDS):
            pass
        elif kind == "name" and following == "(":
            names.unknown_functions.add(text)
        elif kind == "name":
            names.metrics.add(text)
            if following == "{":
                metric = text
                in_braces = True
                i += 1
        if text == "}":
            metric = ""
        i += 1
    return names


def grafana_query_names(query: str) -> Names:
    """A dashboard variable's query: ``label_values(selector, label)``, ``label_values(label)`` or
    ``query_result(expr)``; anything else (``metrics(regex)``, ``label_names()``) fails, having no checkable names."""
    query = query.strip()
    found = re.fullmatch(r"label_values\((.*?)(?:,\s*([a-zA-Z_]\w*))?\s*\)", query, re.DOTALL)
    if found:
        selector, label = found.groups()
        if label is None:  # label_values(label)
            return Names(grouped={selector.strip()})
        names = promql_names(selector)
        names.grouped.add(label)
        return names
    found = re.fullmatch(r"query_result\((.*)\)", query, re.DOTALL)
    if found:
        return promql_names(found.group(1))
    raise AssertionError(f"unsupported variable query {query!r}")


@dataclass(frozen=True)
class Row:
    name: str
    type: str
    labels: frozenset[str]


def catalogue() -> dict[str, Row]:
    """The table of docs/metrics.md (as tests/integration/test_metrics_catalogue.py reads it): name -> row."""
    rows: dict[str, Row] = {}
    for line in CATALOGUE.read_text().splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) != 6 or not cells[0].startswith("`"):
            continue
        name, kind, _unit, labels, _process, _meaning = cells
        rows[name.strip("`")] = Row(name.strip("`"), kind.split()[0], frozenset(re.findall(r"`([a-z_]+)`", labels)))
    return rows


def exposed(rows: dict[str, Row]) -> dict[str, frozenset[str]]:
    """Every series name Prometheus shows for the catalogue, with the labels it carries."""
    out = dict(SCRAPE_METRICS)
    for row in rows.values():
        if row.type == "histogram":
            out.update({row.name + suffix: row.labels for suffix in HISTOGRAM_SUFFIXES})
        else:
            out[row.name] = row.labels
    return out


def problems(names: Names, series: dict[str, frozenset[str]]) -> list[str]:
    """What an expression names that the catalogue does not have."""
    found = [f"unknown function {f}()" for f in sorted(names.unknown_functions)]
    found += [f"metric {m} is not catalogued" for m in sorted(names.metrics - series.keys())]
    found += [
        f"{m} has no label {label}"
        for m, label in sorted(names.selected)
        if m in series and label not in series[m] | ALWAYS_LABELS
    ]
    known = ALWAYS_LABELS.union(*(series.get(m, frozenset()) for m in names.metrics))
    found += [f"label {label} is not one of {sorted(known)}" for label in sorted(names.grouped - known)]
    if not names.metrics:
        found.append("names no metric")
    return found


def panels(board: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel, including those inside collapsed rows."""
    for panel in board.get("panels", []):
        yield panel
        yield from panel.get("panels", [])


def dashboard_expressions(board: dict[str, Any]) -> Iterator[tuple[str, Names]]:
    """(where, names) for every target and every query variable of a dashboard."""
    for panel in panels(board):
        for target in panel.get("targets", []):
            yield f"panel {panel['title']!r} {target['refId']}", promql_names(target["expr"])
    for variable in board["templating"]["list"]:
        if variable["type"] == "query":
            query = variable["query"]
            text = query["query"] if isinstance(query, dict) else query
            yield f"variable {variable['name']}", grafana_query_names(text)


def alert_rules() -> list[dict[str, Any]]:
    document = yaml.safe_load(ALERTS.read_text())
    return [rule for group in document["groups"] for rule in group["rules"]]


def promtool() -> str | None:
    cached = ROOT / ".cache" / "tools" / "bin" / "promtool"
    return shutil.which("promtool") or (str(cached) if cached.is_file() else None)


needs_promtool = pytest.mark.skipif(
    promtool() is None, reason="promtool not found in PATH or .cache/tools/bin (make promtool installs it)"
)


# -- the tokenizer ------------------------------------------------------------------------------------------------


def test_tokenizer_reads_a_tricky_expression():
    expr = """
        sum by (job, rpc_method) (
          rate(rpc_server_call_duration_seconds_count{job=~"$job", rpc_grpc_status_code!~"0|5", x="by (le)"}
               [$__rate_interval] offset 5m)
        )
        / on (job) group_left()
          sum without(instance)(irate(syncgov_consumer_redeliveries_total{consumer='rate(x)'}[5m]))
        > bool 0.5e3
        and histogram_quantile(0.9, sum by (le) (rate(syncgov_po_propagation_duration_seconds_bucket[1h:5m] @ end())))
        unless up == 0 or {__name__="target_info"} or label_replace(vector(1), "dst", "$1", "src", "(.*)")
        or sum(max_over_time(syncgov_consumer_lag [ ${window} ])) by (consumer)
    """
    names = promql_names(expr)
    assert names.metrics == {
        "rpc_server_call_duration_seconds_count",
        "syncgov_consumer_redeliveries_total",
        "syncgov_po_propagation_duration_seconds_bucket",
        "syncgov_consumer_lag",
        "up",
    }
    assert names.selected == {
        ("rpc_server_call_duration_seconds_count", "job"),
        ("rpc_server_call_duration_seconds_count", "rpc_grpc_status_code"),
        ("rpc_server_call_duration_seconds_count", "x"),
        ("syncgov_consumer_redeliveries_total", "consumer"),
    }
    assert names.grouped == {"job", "rpc_method", "instance", "le", "__name__", "consumer"}
    assert names.unknown_functions == set()


def test_checker_catches_uncatalogued_names():
    series = exposed(catalogue())
    board = {
        "panels": [
            {
                "title": "bogus",
                "targets": [
                    {"refId": "A", "expr": "sum(rate(syncgov_bogus_total[5m]))"},
                    {"refId": "B", "expr": 'max by (colour) (syncgov_consumer_lag{consumer="x", team="y"})'},
                    {"refId": "C", "expr": "rat(syncgov_consumer_handed_off_total[5m])"},
                    {"refId": "D", "expr": "syncgov_invoices_blocked_bucket"},  # a gauge has no buckets
                ],
            }
        ],
        "templating": {"list": [{"type": "query", "name": "v", "query": "label_values(syncgov_nope, job)"}]},
    }
    found = {where: problems(names, series) for where, names in dashboard_expressions(board)}
    assert found == {
        "panel 'bogus' A": ["metric syncgov_bogus_total is not catalogued"],
        "panel 'bogus' B": [
            "syncgov_consumer_lag has no label team",
            "label colour is not one of ['consumer', 'instance', 'job', 'le', 'quantile']",
        ],
        "panel 'bogus' C": ["unknown function rat()"],
        "panel 'bogus' D": ["metric syncgov_invoices_blocked_bucket is not catalogued"],
        "variable v": ["metric syncgov_nope is not catalogued"],
    }


def test_catalogue_is_read():
    rows = catalogue()
    assert rows["rpc_server_call_duration_seconds"].type == "histogram"
    assert rows["rpc_server_call_duration_seconds"].labels >= {"rpc_service", "rpc_method", "rpc_grpc_status_code"}
    assert rows["syncgov_exceptions_backlog"].labels == {"type", "team"}
    assert "rpc_server_call_duration_seconds_bucket" in exposed(rows)


# -- the dashboards -----------------------------------------------------------------------------------------------


def test_both_dashboards_exist():
    assert [d.name for d in DASHBOARDS] == ["syncgov-executive.json", "syncgov-operations.json"]


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.stem)
def test_dashboard_is_an_importable_model(path: Path):
    board = json.loads(path.read_text())
    assert board["uid"] == path.stem
    assert board["title"].startswith("syncgov / ")
    assert board["schemaVersion"] >= 36
    assert board["id"] is None  # importable into any Grafana
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    every = list(panels(board))
    assert len({p["id"] for p in every}) == len(every)
    drawn = [p for p in every if p["type"] not in ("row", "text")]
    assert len(drawn) >= 10
    for panel in drawn:
        assert panel["targets"], panel["title"]
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        assert panel["fieldConfig"]["defaults"]["unit"], panel["title"]
        assert panel.get("description"), panel["title"]
        for target in panel["targets"]:
            assert target["expr"].strip(), panel["title"]
            assert target["datasource"]["uid"] == "${datasource}", panel["title"]
        assert len({t["refId"] for t in panel["targets"]}) == len(panel["targets"])
    for panel in every:
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.stem)
def test_dashboard_queries_name_only_catalogued_metrics(path: Path):
    series = exposed(catalogue())
    board = json.loads(path.read_text())
    found = {where: problems(names, series) for where, names in dashboard_expressions(board)}
    assert found, "no queries"
    assert {where: p for where, p in found.items() if p} == {}


def test_operations_dashboard_is_per_service_and_consumer():
    board = json.loads((ROOT / "deploy" / "grafana" / "syncgov-operations.json").read_text())
    variables = {v["name"] for v in board["templating"]["list"]}
    assert {"job", "consumer"} <= variables
    repeated = [p for p in panels(board) if p.get("repeat") == "consumer"]
    assert repeated, "a row repeated per consumer"
    exprs = [t["expr"] for p in panels(board) for t in p.get("targets", [])]
    assert all('job=~"$job"' in e for e in exprs)
    assert any("syncgov_consumer_lag" in e and "$consumer" in e for e in exprs)


def test_executive_dashboard_answers_the_business_questions():
    board = json.loads((ROOT / "deploy" / "grafana" / "syncgov-executive.json").read_text())
    named = set().union(*(names.metrics for _, names in dashboard_expressions(board)))
    assert {
        "syncgov_po_propagation_duration_seconds_bucket",
        "syncgov_po_awaiting_erp",
        "syncgov_invoices_blocked",
        "syncgov_invoices_blocked_by_reason",
        "syncgov_exceptions_backlog",
        "syncgov_exceptions_closure_time_seconds",
    } <= named


# -- the alert rules ----------------------------------------------------------------------------------------------


def test_alert_rules_name_only_catalogued_metrics():
    series = exposed(catalogue())
    found = {rule["alert"]: problems(promql_names(rule["expr"]), series) for rule in alert_rules()}
    assert {alert: p for alert, p in found.items() if p} == {}


def test_every_alert_waits_has_a_severity_and_says_what_to_run():
    rules = alert_rules()
    assert len(rules) >= 10
    for rule in rules:
        assert re.fullmatch(r"\d+[smh]", rule["for"]), rule["alert"]
        assert rule["labels"]["severity"] in {"critical", "warning", "info"}, rule["alert"]
        assert {"summary", "description", "runbook"} <= rule["annotations"].keys(), rule["alert"]
        assert rule["annotations"]["runbook"].startswith("syncgov "), rule["alert"]
    alerts = {rule["alert"]: rule["expr"] for rule in rules}
    assert 'type="sla_breach"' in alerts["SyncgovSlaBreachesOpen"]
    assert "syncgov_consumer_lag" in alerts["SyncgovConsumerLagHigh"]
    assert "syncgov_consumer_handed_off_total" in alerts["SyncgovConsumerHandingOff"]
    assert "delta(syncgov_exceptions_backlog" in alerts["SyncgovExceptionBacklogGrowing"]


def test_runbooks_name_real_cli_commands():
    """Every ``syncgov <group> <command>`` a runbook names is a command of libs/cli."""
    from typer.main import get_command

    from libs.cli.main import app

    root = get_command(app)
    commands: dict[str, Any] = getattr(root, "commands", {})
    for rule in alert_rules():
        for invocation in re.findall(r"syncgov ([a-z-]+(?: [a-z-]+)?)", rule["annotations"]["runbook"]):
            group, _, sub = invocation.partition(" ")
            assert group in commands, (rule["alert"], invocation)
            children: dict[str, Any] = getattr(commands[group], "commands", {})
            if children:
                assert sub in children, (rule["alert"], invocation)


# -- promtool -----------------------------------------------------------------------------------------------------


def run_promtool(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    binary = promtool()
    assert binary is not None
    return subprocess.run([binary, *args], cwd=cwd, capture_output=True, text=True, timeout=60, check=False)


@needs_promtool
def test_promtool_check_rules():
    done = run_promtool("check", "rules", str(ALERTS.relative_to(ROOT)))
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"SUCCESS: {len(alert_rules())} rules found" in done.stdout


@needs_promtool
def test_promtool_test_rules():
    done = run_promtool("test", "rules", ALERT_TESTS.name, cwd=ALERT_TESTS.parent)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout


# Grafana's variables as values PromQL accepts, so promtool can parse the dashboards' expressions.
GRAFANA_VALUES = {"$__rate_interval": "5m", "$__interval": "1m", "$__range": "1d"}


@needs_promtool
def test_promtool_parses_the_dashboards_expressions(tmp_path: Path):
    rules: list[dict[str, str]] = []
    for path in DASHBOARDS:
        for panel in panels(json.loads(path.read_text())):
            for target in panel.get("targets", []):
                expr = target["expr"]
                for variable, value in GRAFANA_VALUES.items():
                    expr = expr.replace(variable, value)
                expr = re.sub(r"\$\{?\w+\}?", ".*", expr)  # inside a label matcher's string
                rules.append({"record": f"dashboard:{path.stem.replace('-', '_')}:{len(rules)}", "expr": expr})
    file = tmp_path / "dashboards.rules.yml"
    file.write_text(yaml.safe_dump({"groups": [{"name": "dashboards", "rules": rules}]}))
    done = run_promtool("check", "rules", str(file))
    assert done.returncode == 0, done.stdout + done.stderr
