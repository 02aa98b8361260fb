"""Live metrics: Engine.histograms, the Prometheus instruments (spark/metrics.py),
the port range (spark/ports.py), the executor server (spark/metrics_server.py),
the live channel and the driver's endpoint, and a real Prometheus server
scraping a ``local-cluster`` job (tests/spark_metrics_job.py).

Every wait is bounded; every process a test starts is stopped by it.
"""

from __future__ import annotations

import bisect
import concurrent.futures
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
import urllib.request

import numpy as np
import pyarrow as pa
import pytest
import torch
from models import FEATURES, ModelFiles

from torchspark import Engine, Input
from torchspark.spark import metrics_server
from torchspark.spark.job_metrics import Endpoint
from torchspark.spark.live import Receiver, sender
from torchspark.spark.metrics import TaskMetrics
from torchspark.spark.monitor import Settings
from torchspark.spark.ports import parse_ports, serve
from torchspark.spark.progress import line
from torchspark.spark.worker import new_stats, score


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> ModelFiles:
    return ModelFiles(tmp_path_factory.mktemp("metrics_models"))


# ---------------------------------------------------------------------------
# Engine.histograms: every model call, in fixed buckets


def test_engine_histograms_count_every_call(models):
    with Engine(models.path("mlp"), batch_size=8) as engine:
        before = engine.histograms()
        assert all(sum(h["counts"]) == 0 and h["sum"] == 0 for h in before.values())
        for rows in (20, 3, 8):
            engine.run(torch.randn(rows, FEATURES))
        stats = engine.stats()
        after = engine.histograms()
    rows = after["batch_rows"]
    # 20 rows -> 8, 8, 4; 3 -> 3; 8 -> 8: five calls of 31 rows.
    assert sum(rows["counts"]) == stats["batches"] == 5
    assert rows["sum"] == stats["rows"] == 31
    expected = [0] * (len(rows["bounds"]) + 1)
    for n in (8, 8, 4, 3, 8):
        expected[bisect.bisect_left(rows["bounds"], n)] += 1
    assert rows["counts"] == expected
    for name in ("queue", "stage", "compute", "end_to_end"):
        latency = after[name]
        assert len(latency["counts"]) == len(latency["bounds"]) + 1
        assert latency["bounds"] == sorted(latency["bounds"]) and latency["bounds"][0] <= 0.001
        assert sum(latency["counts"]) == stats[name]["count"]
        # The sum agrees with the window's mean (every sample is in the window here).
        assert latency["sum"] == pytest.approx(stats[name]["mean_ms"] / 1e3 * stats[name]["count"])


# ---------------------------------------------------------------------------
# Native counts into Prometheus histograms


def test_added_counts_equal_observations():
    """metrics._add_counts (n observations per bucket at once) gives the
    exposition observe() gives for the same values."""
    from prometheus_client import CollectorRegistry, Histogram, generate_latest

    from torchspark.spark.metrics import _add_counts

    bounds = [0.001, 0.01, 0.1, 1.0]
    values = [0.0005, 0.001, 0.002, 0.05, 0.05, 0.5, 3.0, 7.5]
    observed, added = CollectorRegistry(), CollectorRegistry()
    h1 = Histogram("t", "help", ["a"], registry=observed, buckets=bounds).labels("x")
    h2 = Histogram("t", "help", ["a"], registry=added, buckets=bounds).labels("x")
    for v in values:
        h1.observe(v)
    counts = [0] * (len(bounds) + 1)
    for v in values:
        counts[bisect.bisect_left(bounds, v)] += 1
    _add_counts(h2, counts, sum(values))

    def exposition(registry: CollectorRegistry) -> list[str]:
        text = generate_latest(registry).decode()
        return [s for s in text.splitlines() if s.startswith("t_") and "_created" not in s]

    lines = exposition(observed)
    assert lines == exposition(added)
    assert 't_bucket{a="x",le="0.001"} 2.0' in lines and 't_count{a="x"} 8.0' in lines


# ---------------------------------------------------------------------------
# Ports from a range


def free_ports(count: int) -> range:
    """``count`` consecutive ports that were free a moment ago (bounded search)."""
    for _ in range(50):
        with socket.socket() as s:
            s.bind(("", 0))
            first = s.getsockname()[1]
        if first + count > 65535:
            continue
        sockets = []
        try:
            for port in range(first, first + count):
                probe = socket.socket()
                sockets.append(probe)
                probe.bind(("", port))
            return range(first, first + count)
        except OSError:
            continue
        finally:
            for probe in sockets:
                probe.close()
    pytest.fail("no free port range")


def hello(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"hello"]


def get(url: str, timeout: float = 10) -> str:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return response.read().decode()


def test_parse_ports():
    assert parse_ports("9450-9469") == range(9450, 9470)
    assert parse_ports(" 9450 ") == range(9450, 9451)
    for bad in ("x", "9460-9450", "0-10", "65535-65536", ""):
        with pytest.raises(ValueError, match=r"spark\.torchspark\.metrics\.ports"):
            parse_ports(bad, "spark.torchspark.metrics.ports")


def test_serve_skips_a_port_in_use():
    ports = free_ports(3)
    with socket.socket() as taken:
        taken.bind(("", ports[0]))
        taken.listen()
        server = serve(hello, "", ports)
        try:
            assert server.server_port == ports[1]
            assert get(f"http://127.0.0.1:{server.server_port}/") == "hello"
            # The rest of the range taken too: an error naming the range.
            second = serve(hello, "", ports)
            try:
                assert second.server_port == ports[2]
                with pytest.raises(OSError, match=f"no free port in {ports[0]}-{ports[-1]} "):
                    serve(hello, "", ports)
            finally:
                second.shutdown()
                second.server_close()
        finally:
            server.shutdown()
            server.server_close()


# ---------------------------------------------------------------------------
# The executor's server process


def test_executor_server_serves_the_workers_and_goes_with_the_executor(tmp_path):
    """Two workers ask at once: one server. Metrics written by two worker
    processes (multiprocess mode) are served summed; the server exits and
    removes the directory when the executor process exits."""
    directory = str(tmp_path / "app-1-7")
    ports = free_ports(4)
    executor = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            infos = list(
                pool.map(
                    lambda _: metrics_server.ensure(
                        directory, f"{ports[0]}-{ports[-1]}", executor.pid, "127.0.0.1"
                    ),
                    range(2),
                )
            )
        assert infos[0] == infos[1] and infos[0]["port"] in ports
        address = infos[0]["address"]
        # What metrics.activate does (without importing torch: two seconds a process).
        worker = textwrap.dedent(
            f"""
            import os
            os.environ["PROMETHEUS_MULTIPROC_DIR"] = {directory!r}
            from prometheus_client import Counter
            Counter("torchspark_rows_success", "rows", ["a"], registry=None).labels("x").inc(5)
            """
        )
        for _ in range(2):
            subprocess.run([sys.executable, "-c", worker], check=True, timeout=60)
        body = get(f"http://{address}/metrics")
        assert 'torchspark_rows_success_total{a="x"} 10.0' in body
        executor.kill()
        executor.wait(10)
        deadline = time.monotonic() + 15
        while os.path.exists(directory) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not os.path.exists(directory)
        with pytest.raises(OSError):
            get(f"http://{address}/metrics", timeout=2)
    finally:
        executor.kill()
        executor.wait(10)
        info = metrics_server.read_address(directory)
        if info is not None:
            os.kill(int(info["pid"]), signal.SIGKILL)


# ---------------------------------------------------------------------------
# The live channel and the driver's /metrics


def scored_task(engine, settings, partition: int, attempt: int, rows: list[int], address=None):
    """One task's batches through worker.score with its TaskMetrics, as the
    worker runs them; the TaskMetrics."""
    task = {"stage": 3, "partition": partition, "attempt": attempt, "start": time.time()}
    metrics = TaskMetrics(settings, engine, "mlp.pt", "abc", "cpu", task)
    metrics.address = address
    stats = new_stats()
    batches = [
        pa.record_batch({"x": pa.array(list(np.ones((n, FEATURES), np.float32)))}) for n in rows
    ]
    for _ in score(engine, metrics.feed(batches), [], "out", "test", None, stats, metrics.on_batch):
        pass
    metrics.finish(stats)
    return metrics


def scrape(url: str) -> dict[str, float]:
    """``name{labels}`` -> value of a Prometheus text page (comments skipped)."""
    samples = {}
    for sample in get(url).splitlines():
        if sample and not sample.startswith("#"):
            name, _, value = sample.rpartition(" ")
            samples[name] = float(value)
    return samples


def test_driver_endpoint_sums_the_tasks(models):
    receiver = Receiver("secret")
    endpoint = Endpoint(receiver, "app-x", "127.0.0.1", free_ports(3))
    settings = Settings("run1", "app-x", "secret", ("127.0.0.1", receiver.port), False, "1", None)
    try:
        with Engine(models.path("mlp"), inputs=Input("x"), batch_size=16) as engine:
            scored_task(engine, settings, 0, 0, [10, 20], address="exec-a:9450")
            scored_task(engine, settings, 1, 0, [7])  # failed and retried: counted once
            last = scored_task(engine, settings, 1, 1, [40, 10], address="exec-b:9451")
            # Another job's datagram (not its token): dropped.
            sender(("127.0.0.1", receiver.port)).send({"token": "other", "run": "run1"})
        labels = 'application="app-x",run="run1"'
        url = f"http://{endpoint.address}/metrics"
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            samples = scrape(url)
            if samples.get(f"torchspark_job_tasks_finished_total{{{labels}}}") == 2:
                break
            time.sleep(0.05)
        assert samples[f"torchspark_job_rows_total{{{labels}}}"] == 80
        assert samples[f"torchspark_job_request_success_total{{{labels}}}"] == 4
        assert samples[f"torchspark_job_tasks_running{{{labels}}}"] == 0
        count = samples[f"torchspark_job_request_duration_seconds_count{{{labels}}}"]
        assert count == 4
        # Model calls of at most batch_size (16) rows: at least 2 + 4 (not the retried task's).
        calls = samples[
            'torchspark_job_batch_rows_bucket{application="app-x",le="+Inf",run="run1"}'
        ]
        assert 6 <= calls == samples[f"torchspark_job_batch_rows_count{{{labels}}}"]
        assert (
            samples['torchspark_job_batch_rows_bucket{application="app-x",le="16.0",run="run1"}']
            == calls
        )
        assert samples[f"torchspark_job_batch_rows_sum{{{labels}}}"] == 80
        assert last.sender.dropped == 0
        assert json.loads(get(f"http://{endpoint.address}/targets")) == [
            {"targets": ["exec-a:9450", "exec-b:9451"], "labels": {"application": "app-x"}}
        ]
        executors = [k for k in samples if k.startswith("torchspark_executor_info")]
        assert len(executors) == 2
    finally:
        endpoint.close()
        receiver.close()


def test_progress_line():
    assert line(12000, 3.0, 0, None) == "torchspark: 12,000 rows scored, 4,000 rows/s"
    assert line(12000, 3.0, 5, 30000) == (
        "torchspark: 12,000 rows scored, 4,000 rows/s, 5 bad rows, 40% of 30,000, ETA 4 s"
    )
