"""Prometheus and Grafana configuration, checked by parsing (what the metrics must be is checked
against a real server in test_deploy_server.py)."""
from __future__ import annotations

import json

from deploy_support import DEPLOY, compose, grafana_to_promql, load_yaml, selectors

DASHBOARD = DEPLOY / "grafana" / "dashboards" / "clip-triton.json"


def dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def dashboard_queries() -> list[str]:
    """Every PromQL expression of the dashboard: panel targets and template variables' label_values()."""
    queries = [t["expr"] for p in dashboard()["panels"] for t in p.get("targets", [])]
    for variable in dashboard()["templating"]["list"]:
        query = variable["query"]["query"]
        assert query.startswith("label_values(") and query.endswith(")")
        metric, _label = (part.strip() for part in query[len("label_values("):-1].split(","))
        queries.append(metric)
    return [grafana_to_promql(q) for q in queries]


def test_prometheus_scrapes_triton_metrics_port():
    config = load_yaml(DEPLOY / "prometheus" / "prometheus.yml")
    (job,) = config["scrape_configs"]
    assert job["metrics_path"] == "/metrics"
    (target,) = [t for group in job["static_configs"] for t in group["targets"]]
    host, port = target.split(":")
    assert host in compose()["services"] and port == compose()["services"]["triton"]["environment"].get("METRICS_PORT", "8002")
    assert any(p.endswith(":8002:8002") for p in compose()["services"]["triton"]["ports"])


def test_prometheus_config_is_mounted_where_prometheus_reads_it():
    prometheus = compose()["services"]["prometheus"]
    assert "./deploy/prometheus/prometheus.yml:/etc/prometheus/prometheus.yml:ro" in prometheus["volumes"]
    assert "--config.file=/etc/prometheus/prometheus.yml" in prometheus["command"]


def test_grafana_provisions_the_datasource_the_dashboard_uses():
    (source,) = load_yaml(DEPLOY / "grafana" / "provisioning" / "datasources" / "prometheus.yml")["datasources"]
    assert source["type"] == "prometheus" and source["url"] == "http://prometheus:9090"
    used = {p["datasource"]["uid"] for p in dashboard()["panels"] if "datasource" in p}
    used |= {t["datasource"]["uid"] for p in dashboard()["panels"] for t in p.get("targets", [])}
    assert used == {source["uid"]}


def test_grafana_loads_dashboards_from_the_mounted_folder():
    (provider,) = load_yaml(DEPLOY / "grafana" / "provisioning" / "dashboards" / "clip-triton.yml")["providers"]
    grafana = compose()["services"]["grafana"]
    assert f"./deploy/grafana/dashboards:{provider['options']['path']}:ro" in grafana["volumes"]
    assert "./deploy/grafana/provisioning:/etc/grafana/provisioning:ro" in grafana["volumes"]


def test_dashboard_is_valid_json_with_unique_panel_ids_and_parseable_queries():
    board = dashboard()
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids)) and board["uid"] == "clip-triton"
    for query in dashboard_queries():
        assert selectors(query), query  # parses as PromQL and reads at least one series


def test_dashboard_covers_what_operators_need():
    titles = {p["title"] for p in dashboard()["panels"]}
    assert {"Throughput", "Queue time per request", "Compute time per request", "Average batch size",
            "Failures", "GPU utilisation", "GPU memory", "Preprocessing time per image, by stage",
            "Images by preprocessing path"} <= titles
    metrics = {s.name for q in dashboard_queries() for s in selectors(q)}
    assert {"nv_inference_count", "nv_inference_exec_count", "nv_inference_queue_duration_us",
            "nv_inference_compute_infer_duration_us", "nv_inference_request_failure",
            "nv_gpu_utilization", "nv_gpu_memory_used_bytes", "nv_gpu_memory_total_bytes",
            "clip_triton_preprocess_seconds_total", "clip_triton_preprocess_images_total"} <= metrics
