"""What on-call loads: docs/ops/prometheus-rules.yml (parsed, and checked and unit-tested by promtool
where it is installed), docs/ops/grafana-dashboard.json, and the operations guide. Every series they
name is one scantide exports, and every series scantide exports is in the guide."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import yaml
from prometheus_client import REGISTRY

import autoscaler.metrics  # noqa: F401 - each part's series, registered on import
import conductor.metrics  # noqa: F401
import monitor.metrics  # noqa: F401
import service.api.metrics  # noqa: F401
import service.worker_metrics  # noqa: F401
from monitor.events import EVENT_TYPES
from service.api.metrics import QueueCollector
from service.domain import QueueStats
from tests.ci import skip_or_fail

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "docs" / "ops" / "prometheus-rules.yml"
RULES_TEST = Path(__file__).with_name("prometheus-rules-test.yml")
DASHBOARD = ROOT / "docs" / "ops" / "grafana-dashboard.json"
GUIDE = ROOT / "docs" / "operations.md"
# The events that report an outcome; every other event type is an alert and needs a rule.
OUTCOMES = {"scan.completed", "scan.failed", "pipeline.completed", "pipeline.failed"}
SERIES = re.compile(r"\b(scantide_[a-z0-9_]+)")


class OneQueue:
    def queues(self) -> list[str]:
        return ["default"]

    def queue_stats(self, queue: str) -> QueueStats:
        return QueueStats(queue, 1, 0, 2.0)


def exported() -> dict[str, set[str]]:
    """Each scantide family scantide exports → the sample names it is scraped as."""
    families = [f for f in REGISTRY.collect() if f.name.startswith("scantide_")]
    families += list(QueueCollector(OneQueue()).collect())  # type: ignore[arg-type]
    suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_sum", "_count"]}
    return {f.name: {f.name + s for s in suffixes.get(f.type, [""])} for f in families}


def sample_names() -> set[str]:
    return set().union(*exported().values())


def rules() -> list[dict]:
    doc = yaml.safe_load(RULES.read_text())
    return [rule for group in doc["groups"] for rule in group["rules"]]


def test_the_rules_cover_every_alert_code_and_name_only_our_series() -> None:
    found = rules()
    assert found and all(set(r) >= {"alert", "expr", "labels", "annotations"} for r in found)
    codes = {r["labels"]["code"] for r in found}
    assert set(EVENT_TYPES) - OUTCOMES <= codes, "an alert event type without a rule"
    ours = sample_names()
    guide = GUIDE.read_text()
    for rule in found:
        assert rule["labels"]["severity"] in ("critical", "warning", "info"), rule["alert"]
        assert set(SERIES.findall(rule["expr"])) <= ours, (rule["alert"], rule["expr"])
        assert rule["annotations"]["summary"] and rule["annotations"]["description"], rule["alert"]
        anchor = rule["annotations"]["runbook_url"].partition("#")[2]
        code = rule["labels"]["code"]
        assert anchor == code.replace(".", ""), rule["alert"]  # the anchor of the guide's heading `code`
        assert f"\n#### `{code}`" in guide, f"no runbook entry for {code}"


def test_promtool_checks_and_unit_tests_the_rules() -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        skip_or_fail("promtool is not installed (Debian: apt-get install prometheus)")
    for args in (["check", "rules", str(RULES)], ["test", "rules", str(RULES_TEST)]):
        done = subprocess.run([promtool, *args], capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stdout + done.stderr


def test_the_dashboard_is_grafana_json_over_our_series() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] and dashboard["schemaVersion"] >= 36
    targets = [t for p in dashboard["panels"] for t in p.get("targets", [])]
    assert len(targets) >= 10
    ours = sample_names()
    named: set[str] = set()
    for target in targets:
        found = set(SERIES.findall(target["expr"]))
        assert found and found <= ours, target["expr"]
        named |= found
    required = {"scantide_queue_depth", "scantide_queue_oldest_age_seconds", "scantide_tasks_total",
                "scantide_task_duration_seconds_bucket", "scantide_enqueue_requests_total",
                "scantide_webhook_deliveries_total", "scantide_webhook_lag_seconds_bucket", "scantide_outbox_pending",
                "scantide_fleet_instances", "scantide_fleet_cost_per_hour", "scantide_autoscaler_decisions_total"}
    assert required <= named, required - named


def test_the_guide_lists_every_series() -> None:
    guide = GUIDE.read_text()
    missing = [name for name, samples in exported().items() if not any(f"`{s}`" in guide for s in {name} | samples)]
    assert not missing, f"docs/operations.md does not list {missing}"
