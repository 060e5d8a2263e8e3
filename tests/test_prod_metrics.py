"""Lesson 10 part 3's service: /metrics exports both pools, and scraping it resets nothing."""

from __future__ import annotations

import os
from pathlib import Path

import httpx
import psycopg
import pytest
from prometheus_client.parser import text_string_to_metric_families

from pgcourse.webservice import Service

SERVICES = Path(__file__).resolve().parents[1] / "notebooks" / "services"
pytestmark = pytest.mark.usefixtures("checks_database")


def scrape(url: str) -> dict[str, tuple[str, float]]:
    text = httpx.get(url + "/metrics").text
    return {s.name: (family.type, s.value) for family in text_string_to_metric_families(text) for s in family.samples}


def test_metrics_count_both_pools_and_a_scrape_resets_nothing():
    with Service("prod_metrics:app", app_dir=SERVICES, env={"SERVICE_NAME": "test-prod-metrics"}) as service:
        for path in ["/psycopg/report", "/psycopg/report", "/sqlalchemy/report", "/customers/1"]:
            httpx.get(service.url + path, timeout=10).raise_for_status()
        first, second = scrape(service.url), scrape(service.url)
        with psycopg.connect(os.environ["DATABASE_URL"]) as conn:
            names = {n for (n,) in conn.execute("SELECT application_name FROM pg_stat_activity WHERE datname = current_database()")}
    assert first == second, "a scrape must not reset a counter (get_stats, not pop_stats)"
    assert first["psycopg_pool_requests_total"] == ("counter", 3.0)
    assert first["psycopg_pool_pool_size"][0] == "gauge" and first["psycopg_pool_requests_waiting"] == ("gauge", 0.0)
    assert first["sqlalchemy_pool_checkouts_total"] == ("counter", 1.0)
    assert first["sqlalchemy_pool_checkins_total"] == ("counter", 1.0)
    assert first["sqlalchemy_pool_checked_out"] == ("gauge", 0.0) and first["sqlalchemy_pool_open"] == ("gauge", 1.0)
    assert not any(name.endswith("_created") for name in first), "one sample per counter"
    assert not any(name.startswith(("process_", "python_")) for name in first), "the service's own registry only"
    assert "test-prod-metrics" in names, "every connection carries the service's application_name"
