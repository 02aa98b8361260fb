"""The driver's ``/metrics``: the job so far, summed over its tasks' live figures.

Served by :class:`Endpoint` on the driver (a port of
``spark.torchspark.metrics.driverPorts``) from what the tasks send over the
live channel (:mod:`.live`): per run (one ``predict`` / ``arrow_predictor`` /
``torch_udf``), rows, Arrow batches, failed and bad rows, running and
finished tasks, and the latency histograms summed over tasks; names
``torchspark_job_*`` so that a query summing the executors' metrics never
counts them twice. ``/targets`` lists the executors' ``/metrics`` addresses
reported so far, in Prometheus' HTTP service discovery format
(``http_sd_configs``): how Prometheus finds executor ports taken from a range.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from typing import Any

from .live import Receiver
from .ports import serve


def latest_attempts(messages: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """Of each task (run, stage, partition), the newest attempt's figures: a
    retried task counts once."""
    latest: dict[tuple[Any, ...], dict[str, Any]] = {}
    for m in messages:
        key = (m["run"], m["stage"], m["partition"])
        if key not in latest or m["attempt"] > latest[key]["attempt"]:
            latest[key] = m
    return list(latest.values())


def _summed(messages: list[dict[str, Any]], name: str) -> tuple[list[int], float]:
    counts: list[int] = []
    total = 0.0
    for m in messages:
        h = m[name]
        values, value_sum = (
            (h, m[f"{name}_sum"]) if isinstance(h, list) else (h["counts"], h["sum"])
        )
        counts = [a + b for a, b in zip(counts, values, strict=True)] if counts else list(values)
        total += value_sum
    return counts, total


def _buckets(bounds: list[float], counts: list[int]) -> list[tuple[str, float]]:
    """Cumulative (le, count) pairs, +Inf last, as HistogramMetricFamily takes them."""
    out, running = [], 0
    for bound, count in zip([*bounds, float("inf")], counts, strict=True):
        running += count
        out.append(("+Inf" if bound == float("inf") else repr(float(bound)), running))
    return out


class JobCollector:
    """prometheus_client collector of the job's figures from ``receiver``."""

    def __init__(self, receiver: Receiver, application: str) -> None:
        self.receiver = receiver
        self.application = application

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import (
            CounterMetricFamily,
            GaugeMetricFamily,
            HistogramMetricFamily,
        )

        labels = ["application", "run"]
        families = {
            "rows": CounterMetricFamily("torchspark_job_rows", "Rows scored", labels=labels),
            "failed_rows": CounterMetricFamily(
                "torchspark_job_rows_failure", "Rows of failed Arrow batches", labels=labels
            ),
            "bad_rows": CounterMetricFamily(
                "torchspark_job_rows_quarantined", "Bad rows set aside or nulled", labels=labels
            ),
            "batches": CounterMetricFamily(
                "torchspark_job_request_success", "Arrow batches scored", labels=labels
            ),
            "running": GaugeMetricFamily(
                "torchspark_job_tasks_running", "Tasks running now", labels=labels
            ),
            "done": CounterMetricFamily(
                "torchspark_job_tasks_finished", "Tasks finished", labels=labels
            ),
        }
        histograms = {
            "request": HistogramMetricFamily(
                "torchspark_job_request_duration_seconds",
                "An Arrow batch, submit to outputs",
                labels=labels,
            ),
            "compute": HistogramMetricFamily(
                "torchspark_job_compute_duration_seconds",
                "One model call, device copies included",
                labels=labels,
            ),
            "batch_rows": HistogramMetricFamily(
                "torchspark_job_batch_rows", "Rows per model call", labels=labels
            ),
        }
        executors = GaugeMetricFamily(
            "torchspark_executor_info",
            "An executor's /metrics address (value 1)",
            labels=["application", "executor", "address"],
        )
        seen: set[tuple[str, str]] = set()
        for run in self.receiver.runs():
            tasks = latest_attempts(self.receiver.tasks(run))
            if not tasks:
                continue
            values = [self.application, run]
            for name in ("rows", "failed_rows", "bad_rows", "batches"):
                families[name].add_metric(values, sum(int(t[name]) for t in tasks))
            families["running"].add_metric(values, sum(not t["done"] for t in tasks))
            families["done"].add_metric(values, sum(bool(t["done"]) for t in tasks))
            for name, family in histograms.items():
                bounds = tasks[0]["rows_bounds" if name == "batch_rows" else "bounds"]
                counts, total = _summed(tasks, name)
                family.add_metric(values, _buckets(bounds, counts), total)
            for t in tasks:
                if t.get("address"):
                    seen.add((str(t["executor"]), str(t["address"])))
        for executor, address in sorted(seen):
            executors.add_metric([self.application, executor, address], 1)
        yield from families.values()
        yield from histograms.values()
        yield executors

    def targets(self) -> list[dict[str, Any]]:
        """The executors' addresses, for Prometheus' ``http_sd_configs``."""
        seen = {t["address"] for t in self.receiver.tasks() if t.get("address")}
        return [{"targets": sorted(seen), "labels": {"application": self.application}}]


class Endpoint:
    """``/metrics`` (the job) and ``/targets`` (the executors) on the driver."""

    def __init__(self, receiver: Receiver, application: str, host: str, ports: range) -> None:
        from prometheus_client import CollectorRegistry, make_wsgi_app

        self.collector = JobCollector(receiver, application)
        registry = CollectorRegistry(auto_describe=False)
        registry.register(self.collector)
        metrics = make_wsgi_app(registry)

        def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
            if environ.get("PATH_INFO") == "/targets":
                body = json.dumps(self.collector.targets()).encode()
                start_response("200 OK", [("Content-Type", "application/json")])
                return [body]
            return metrics(environ, start_response)

        self.server = serve(app, "", ports)
        self.address = f"{host}:{self.server.server_port}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
