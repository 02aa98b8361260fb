"""Live metrics: Engine.histograms, the Prometheus instruments (spark/metrics.py),
the port range (spark/ports.py), the executor server (spark/metrics_server.py),
the live channel and the driver's endpoint, and a real Prometheus server
scraping a ``local-cluster`` job (tests/spark_metrics_job.py).

Every wait is bounded; every process a test starts is stopped by it.
"""

from __future__ import annotations

import bisect
import concurrent.futures
import io
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time
import urllib.parse
import urllib.request

import numpy as np
import pyarrow as pa
import pytest
import torch
from models import FEATURES, ModelFiles

from torchspark import Engine, Input
from torchspark.spark import metrics_server
from torchspark.spark import progress as progress_module
from torchspark.spark.job_metrics import Endpoint, latest_attempts
from torchspark.spark.live import Receiver, sender
from torchspark.spark.metrics import TaskMetrics
from torchspark.spark.monitor import Settings
from torchspark.spark.ports import parse_ports, serve
from torchspark.spark.progress import Progress, line
from torchspark.spark.worker import new_stats, score

HERE = os.path.dirname(os.path.abspath(__file__))


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
    stats = new_stats()
    metrics = TaskMetrics(settings, engine, "mlp.pt", "abc", "cpu", task, stats)
    metrics.address = address
    batches = [
        pa.record_batch({"x": pa.array(list(np.ones((n, FEATURES), np.float32)))}) for n in rows
    ]
    for _ in score(engine, metrics.feed(batches), [], "out", "test", None, stats, metrics.on_batch):
        pass
    metrics.finish()
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


# ---------------------------------------------------------------------------
# Spark, local mode (the shared session): off by default, on by one conf


def needs_java() -> None:
    pytest.importorskip("pyspark")
    if shutil.which("java") is None and not os.environ.get("JAVA_HOME"):
        pytest.skip("no Java runtime for Spark")


def worker_state(batches):
    """A mapInArrow probe: whether this Python worker imported prometheus_client
    and started (or found) an executor metrics server."""
    import sys as _sys

    from torchspark.spark import metrics as _metrics

    for _ in batches:
        pass
    yield pa.RecordBatch.from_pylist(
        [
            {
                "prometheus": "prometheus_client" in _sys.modules,
                "server": bool(_metrics._server.get("info")),
                "multiproc": "PROMETHEUS_MULTIPROC_DIR" in os.environ,
            }
        ]
    )


def spark_frame(spark, rows: int = 4000, partitions: int = 4):
    return spark.range(0, rows, 1, partitions).selectExpr(
        "id", f"transform(sequence(0, {FEATURES - 1}), i -> cast(sin(id + i) as float)) as x"
    )


@pytest.mark.spark
def test_metrics_off_by_default_starts_no_server(spark, models, tmp_path):
    """Off (the default; progress on): no endpoint on the driver, no server on
    the executors, no prometheus_client in the workers; the live figures
    still reach the driver (progress)."""
    from torchspark.spark import monitor

    assert not monitor.enabled(spark)
    import torchspark

    df = spark_frame(spark)
    torchspark.predict(df, models.path("mlp"), inputs="x", keep=["id"]).write.format("noop").mode(
        "overwrite"
    ).save()
    assert torchspark.last_report().rows == 4000
    state = df.mapInArrow(worker_state, "prometheus boolean, server boolean, multiproc boolean")
    assert {tuple(r) for r in state.collect()} == {(False, False, False)}
    driver = monitor.driver_monitor(spark.sparkContext)
    assert driver.endpoint is None
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        tasks = latest_attempts(driver.receiver.tasks())
        if sum(t["rows"] for t in tasks if t["done"]) >= 4000:
            break
        time.sleep(0.05)
    assert sum(t["rows"] for t in tasks if t["done"]) >= 4000


@pytest.mark.spark
def test_metrics_on_in_local_mode(spark, models, tmp_path):
    """One conf on: the executor (the driver's JVM in local mode) serves the
    workers' metrics, the driver the job's; both agree with the report."""
    import torchspark
    from torchspark.spark import monitor

    ports = free_ports(6)
    confs = {
        monitor.ENABLED: "true",
        monitor.PORTS: f"{ports[0]}-{ports[2]}",
        monitor.DRIVER_PORTS: f"{ports[3]}-{ports[5]}",
        monitor.DIRECTORY: str(tmp_path / "metrics"),
    }
    for key, value in confs.items():
        spark.conf.set(key, value)
    try:
        df = spark_frame(spark, rows=6000)
        scored = torchspark.predict(df, models.path("mlp"), inputs="x", keep=["id"], progress=False)
        scored.write.format("noop").mode("overwrite").save()
        report = torchspark.last_report()
        state = df.mapInArrow(worker_state, "prometheus boolean, server boolean, multiproc boolean")
        # (A worker that ran none of the job's tasks, if Spark started one, has none.)
        assert (True, True, True) in {tuple(r) for r in state.collect()}
    finally:
        for key in confs:
            spark.conf.unset(key)
    driver = monitor.driver_monitor(spark.sparkContext).endpoint.address
    application = spark.sparkContext.applicationId
    targets = json.loads(get(f"http://{driver}/targets"))[0]["targets"]
    assert len(targets) == 1 and int(targets[0].rpartition(":")[2]) in ports[:3]
    labels = f'application="{application}",device="cpu",executor="driver",model="mlp.pt"'
    executor = scrape(f"http://{targets[0]}/metrics")
    rows = [v for k, v in executor.items() if k.startswith("torchspark_rows_success_total")]
    assert rows and all(labels in k for k in executor if k.startswith("torchspark_rows_success"))
    assert sum(rows) == report.rows == 6000
    job = scrape(f"http://{driver}/metrics")
    runs = {k: v for k, v in job.items() if k.startswith("torchspark_job_rows_total")}
    assert 6000 in runs.values()


# ---------------------------------------------------------------------------
# A real Prometheus server scraping a local-cluster job


def prometheus_binary() -> str:
    """Debian's prometheus; CI (.ci/run, or CI set) must have it: .ci/setup installs it."""
    binary = shutil.which("prometheus")
    if binary is None:
        if os.environ.get("TORCHSPARK_CI") or os.environ.get("CI"):
            pytest.fail("no prometheus binary: .ci/setup installs Debian's prometheus package")
        pytest.skip("no prometheus binary (apt-get install prometheus, as .ci/setup does)")
    return binary


def wait_file(path, process: subprocess.Popen, seconds: float) -> dict:
    """The JSON the job writes at ``path`` (its log's end if it exits first)."""
    deadline = time.monotonic() + seconds
    while not os.path.exists(path):
        if process.poll() is not None:
            log = os.path.join(os.path.dirname(path), "job.log")
            with open(log, errors="replace") as f:
                tail = f.read()[-4000:]
            pytest.fail(f"the job exited ({process.returncode}) before {path}:\n{tail}")
        assert time.monotonic() < deadline, f"no {path} after {seconds} s"
        time.sleep(0.1)
    with open(path) as f:
        return json.load(f)


def promql(address: str, query: str) -> list[dict]:
    url = f"http://{address}/api/v1/query?" + urllib.parse.urlencode({"query": query})
    answer = json.loads(get(url))
    assert answer["status"] == "success", answer
    return answer["data"]["result"]


def promql_until(address: str, query: str, done, seconds: float = 90) -> list[dict]:
    """``query``'s result once ``done(result)``, polled (bounded)."""
    deadline = time.monotonic() + seconds
    while True:
        result = promql(address, query)
        if done(result) or time.monotonic() > deadline:
            return result
        time.sleep(0.5)


CLUSTER_TEST = "test_prometheus_scrapes_a_local_cluster_job"


@pytest.fixture(scope="module", autouse=True)
def metrics_job(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    """spark_metrics_job.py started in the background when the module starts
    (if its test is selected): its JVMs start while the other tests run. It
    waits for the test before scoring; stopped (its process group) at the end."""
    selected = any(item.name == CLUSTER_TEST for item in request.session.items)
    java = shutil.which("java") is not None or os.environ.get("JAVA_HOME")
    if not selected or not java or shutil.which("prometheus") is None:
        yield None
        return
    ports = free_ports(7)
    workdir = tmp_path_factory.mktemp("metrics_job")
    log = open(workdir / "job.log", "wb")  # noqa: SIM115 (closed below)
    ranges = [f"{ports[0]}-{ports[1]}", f"{ports[2]}-{ports[5]}"]  # the driver's, the executors'
    job = subprocess.Popen(
        [sys.executable, os.path.join(HERE, "spark_metrics_job.py"), str(workdir), *ranges],
        cwd=workdir,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # its JVMs go with its process group
    )
    try:
        yield {"process": job, "workdir": workdir, "prometheus_port": ports[6]}
    finally:
        stop_job(job, workdir)
        log.close()


def stop_job(job: subprocess.Popen, workdir) -> None:
    """Tell spark_metrics_job.py to stop Spark; its process group killed if it hangs."""
    (workdir / "stop").touch()
    try:
        job.wait(90)
    except subprocess.TimeoutExpired:
        os.killpg(job.pid, signal.SIGKILL)
        job.wait()


@pytest.mark.spark
@pytest.mark.slow
def test_prometheus_scrapes_a_local_cluster_job(metrics_job, tmp_path):
    """Prometheus (started here, scraping every second) finds the executors
    through the driver's /targets, scrapes them and the driver while the job
    runs; its PromQL answers equal the job's report: the row count, the
    per-Arrow-batch latency histogram (bucket by bucket) and so its P99."""
    binary = prometheus_binary()
    needs_java()
    assert metrics_job is not None
    job, workdir = metrics_job["process"], metrics_job["workdir"]
    prometheus = None
    try:
        endpoint = wait_file(workdir / "endpoint.json", job, 240)
        driver, application = endpoint["driver"], endpoint["application"]
        config = {
            "global": {"scrape_interval": "1s", "scrape_timeout": "1s"},
            "scrape_configs": [
                {"job_name": "torchspark-driver", "static_configs": [{"targets": [driver]}]},
                {
                    "job_name": "torchspark-executors",
                    "http_sd_configs": [
                        {"url": f"http://{driver}/targets", "refresh_interval": "1s"}
                    ],
                },
            ],
        }
        (tmp_path / "prometheus.yml").write_text(json.dumps(config))  # JSON is YAML
        api = f"127.0.0.1:{metrics_job['prometheus_port']}"
        prometheus = subprocess.Popen(
            [
                binary,
                f"--config.file={tmp_path / 'prometheus.yml'}",
                f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                f"--web.listen-address={api}",
                "--log.level=warn",
            ],
            stdout=subprocess.DEVNULL,
            stderr=open(tmp_path / "prometheus.log", "wb"),  # noqa: SIM115 (the process's)
            start_new_session=True,
        )
        deadline = time.monotonic() + 60
        while True:
            assert prometheus.poll() is None, (tmp_path / "prometheus.log").read_text()
            try:
                up = promql(api, 'up{job="torchspark-driver"}')
                if up and up[0]["value"][1] == "1":
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline, "Prometheus never scraped the driver"
            time.sleep(0.2)
        (workdir / "go").touch()
        result = wait_file(workdir / "result.json", job, 300)
        assert result["executors"] == 2 and result["rows"] == 24000

        selector = f'{{application="{application}"}}'
        rows = promql_until(
            api,
            f"sum(torchspark_rows_success_total{selector})",
            lambda r: r and float(r[0]["value"][1]) == 24000,
        )
        assert rows and float(rows[0]["value"][1]) == 24000, rows
        executors = promql(
            api, f"count(count by (executor) (torchspark_rows_success_total{selector}))"
        )
        assert float(executors[0]["value"][1]) == 2
        job_rows = promql_until(
            api,
            f"sum(torchspark_job_rows_total{selector})",
            lambda r: r and float(r[0]["value"][1]) == 24000,
        )
        assert float(job_rows[0]["value"][1]) == 24000

        # Every Arrow batch's latency is in the task records (fewer than 256 a task).
        latencies = [v / 1e3 for v in result["latency_ms"]]
        assert len(latencies) == result["arrow_batches"]
        buckets = promql(api, f"sum by (le) (torchspark_request_duration_seconds_bucket{selector})")
        scraped = {b["metric"]["le"]: float(b["value"][1]) for b in buckets}
        bounds = sorted(float(le) for le in scraped if le != "+Inf")
        for bound in bounds:
            expected = sum(v <= bound for v in latencies)
            assert scraped[_le(bound, scraped)] == expected, (bound, scraped)
        assert scraped["+Inf"] == len(latencies)
        p99 = promql(
            api,
            "histogram_quantile(0.99, sum by (le) "
            f"(torchspark_request_duration_seconds_bucket{selector}))",
        )
        p99_s = float(p99[0]["value"][1])
        # The report's P99 is a sample; Prometheus interpolates within its
        # bucket: the same bucket.
        report_s = result["p99_ms"] / 1e3
        bucket = bisect.bisect_left(bounds, report_s)
        lower = bounds[bucket - 1] if bucket > 0 else 0.0
        upper = bounds[bucket] if bucket < len(bounds) else float("inf")
        assert lower <= p99_s <= upper, (p99_s, report_s, lower, upper)

        # Every query of the Grafana dashboard runs; those of the panels this
        # CPU job fills (all but errors, device memory and padding) return data.
        # (Rates need two scrapes in their window: polled, bounded.)
        for title, expr in dashboard_queries(application):
            if title.startswith(("Errors", "Device memory", "Padding")):
                promql(api, expr)  # runs (no error), may be empty
            else:
                assert promql_until(api, expr, bool, seconds=30), (title, expr)
    finally:
        if prometheus is not None:
            prometheus.terminate()
            try:
                prometheus.wait(20)
            except subprocess.TimeoutExpired:
                prometheus.kill()
                prometheus.wait()
        stop_job(job, workdir)
    # The executors gone, their metrics servers go and remove their directories.
    metrics_dirs = workdir / "metrics"
    deadline = time.monotonic() + 30
    while metrics_dirs.exists() and any(p.is_dir() for p in metrics_dirs.iterdir()):
        assert time.monotonic() < deadline, list(metrics_dirs.iterdir())
        time.sleep(0.2)


def dashboard_queries(application: str) -> list[tuple[str, str]]:
    """deploy/grafana/torchspark.json's queries, its variables set as Grafana
    would for ``application`` and a short job."""
    with open(os.path.join(HERE, "..", "deploy", "grafana", "torchspark.json")) as f:
        dashboard = json.load(f)
    values = {
        "$application": application,
        "$model": ".*",
        "$executor": ".*",
        "$__rate_interval": "1m",
    }
    queries = []
    for panel in dashboard["panels"]:
        for target in panel["targets"]:
            expr = target["expr"]
            for name, value in values.items():
                expr = expr.replace(name, value)
            queries.append((panel["title"], expr))
    return queries


def test_scrape_config_is_valid():
    """deploy/prometheus/prometheus.yml, as Prometheus' own checker reads it."""
    binary = prometheus_binary()
    promtool = os.path.join(os.path.dirname(binary), "promtool")
    config = os.path.join(HERE, "..", "deploy", "prometheus", "prometheus.yml")
    checked = subprocess.run(
        [promtool, "check", "config", config], capture_output=True, text=True, timeout=60
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr


def _le(bound: float, scraped: dict[str, float]) -> str:
    """The ``le`` label Prometheus gave ``bound``."""
    return next(le for le in scraped if le != "+Inf" and float(le) == bound)


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_follows_the_tasks(monkeypatch, caplog):
    """The line from the tasks' datagrams: rewritten in a terminal, ended when
    the tasks are done; log lines elsewhere; the next action counts anew."""
    monkeypatch.setattr(progress_module, "REFRESH_S", 3600.0)  # refreshed by the test only
    receiver = Receiver("secret")
    terminal, logged = Progress(receiver, Terminal()), Progress(receiver, io.StringIO())
    try:
        send = sender(("127.0.0.1", receiver.port)).send
        start = time.time() - 2.0

        def message(partition: int, rows: int, done: bool, stage: int = 1) -> dict:
            return {
                **{"token": "secret", "run": "r", "stage": stage, "partition": partition},
                **{"attempt": 0, "seq": rows, "done": done, "rows": rows, "bad_rows": 1},
                "start": start,
            }

        def received(count: int, done: int = 0) -> None:
            deadline = time.monotonic() + 10
            while (
                sum(m["rows"] for m in receiver.tasks("r")) < count
                or sum(m["done"] for m in receiver.tasks("r")) < done
            ):
                assert time.monotonic() < deadline
                time.sleep(0.01)

        for progress in (terminal, logged):
            progress.track("r", None)  # the row count unknown: no ETA
        send(message(0, 300, False))
        send(message(1, 100, False))
        received(400)
        caplog.set_level(logging.INFO, logger="torchspark")
        terminal.refresh()
        logged.refresh()
        text = terminal.stream.getvalue()
        assert text.startswith("\rtorchspark: 400 rows scored, ") and "2 bad rows" in text
        assert not text.endswith("\n")
        assert "400 rows scored" in caplog.text and logged.stream.getvalue() == ""
        monkeypatch.setattr(progress_module, "_IDLE_S", 0.0)
        send(message(0, 500, True))
        send(message(1, 100, True))
        received(600, done=2)
        terminal.refresh()
        assert terminal.stream.getvalue().endswith("\n")
        assert "600 rows scored" in terminal.stream.getvalue().splitlines()[-1]
        # Another action of the same DataFrame: new stages, counted from 0.
        send(message(0, 50, False, stage=2))
        received(650)
        terminal.refresh()
        assert terminal.stream.getvalue().rpartition("\n")[2].startswith("\rtorchspark: 50 rows")
    finally:
        terminal.close()
        logged.close()
        receiver.close()


def test_a_failed_task_counts_its_failed_rows(models):
    """A model that raises on the second Arrow batch (batch_size 10: its own
    model call): the task's figures say failed, 10 rows scored and the 5 rows
    of the failed batch."""
    receiver = Receiver("secret")
    settings = Settings("run2", "app-y", "secret", ("127.0.0.1", receiver.port), False, "1", None)
    try:
        with Engine(models.path("negative_raises"), inputs=Input("x"), batch_size=10) as engine:
            task = {"stage": 1, "partition": 0, "attempt": 0, "start": time.time()}
            stats = new_stats()
            metrics = TaskMetrics(settings, engine, "neg.pt", "", "cpu", task, stats)
            batches = [
                pa.record_batch({"x": pa.array(np.full(n, v, np.float32))})
                for n, v in ((10, 1.0), (5, -1.0))
            ]
            with pytest.raises(Exception, match="negative input"):
                for _ in score(
                    engine, metrics.feed(batches), [], "y", "test", None, stats, metrics.on_batch
                ):
                    pass
            metrics.finish()
        deadline = time.monotonic() + 10
        while not any(t["done"] for t in receiver.tasks("run2")):
            assert time.monotonic() < deadline
            time.sleep(0.01)
        (figures,) = receiver.tasks("run2")
        assert figures["failed"] and figures["rows"] == 10 and figures["failed_rows"] == 5
        assert figures["batches"] == 1 and sum(figures["request"]) == 1
    finally:
        receiver.close()


WORKER_SCRIPT = """
import json, sys
import numpy as np, pyarrow as pa
from torchspark import Engine, Input
from torchspark.spark.metrics import TaskMetrics
from torchspark.spark.monitor import Settings
from torchspark.spark.batch_observer import BatchObserver
from torchspark.spark.worker import new_stats, score

model, directory, ports = sys.argv[1:4]
settings = Settings("run3", "app-z", "", None, True, ports, directory)
task = {"stage": 0, "partition": 0, "attempt": 0, "start": 0.0}
with Engine(model, inputs=Input("x"), batch_size=8) as engine:
    stats = new_stats()
    metrics = TaskMetrics(settings, engine, "mlp.pt", "d1g3st", "cpu", task, stats)
    observe = BatchObserver([], [], stats)  # the output statistics, as ArrowPredictor has them

    def on_batch(*args):
        observe(*args)
        metrics.on_batch(*args)

    batches = [pa.record_batch({"x": pa.array(list(np.ones((n, 8), np.float32)))}) for n in (8, 20)]
    for _ in score(engine, metrics.feed(batches), [], "y", "test", None, stats, on_batch):
        pass
    stats.update(bad_rows=1, nonfinite={"y": 1})  # as the bad-row policies will report them
    metrics.flush(done=False)  # mid-task: written as they grow, never twice
    stats.update(bad_rows=3, nonfinite={"y": 2})
    metrics.finish()
print(json.dumps({"address": metrics.address}))
"""


def test_a_worker_writes_its_executors_metrics(models, tmp_path):
    """A worker process with metrics on: it starts the executor's server and
    writes its figures (bad rows and NaN/Inf outputs included), labelled; the
    server serves them."""
    ports = free_ports(1)
    directory = str(tmp_path / "metrics")
    # stderr to a file: the server it starts inherits it (an executor's log).
    with open(tmp_path / "worker.log", "w+") as log:
        done = subprocess.run(
            [sys.executable, "-c", WORKER_SCRIPT, models.path("mlp"), directory, str(ports[0])],
            stdout=subprocess.PIPE,
            stderr=log,
            text=True,
            timeout=120,
        )
        log.seek(0)
        errors = log.read()
    base = os.path.join(directory, "app-z-unknown")  # no JVM above this worker
    try:
        assert done.returncode == 0, errors
        assert "torchspark: executor metrics at http://" in errors  # the server's line
        address = json.loads(done.stdout.splitlines()[-1])["address"]
        assert int(address.rpartition(":")[2]) in ports
        samples = scrape(f"http://{address}/metrics")
        labels = (
            'application="app-z",device="cpu",executor="unknown",model="mlp.pt",'
            'model_digest="d1g3st"'
        )
        assert samples[f"torchspark_rows_success_total{{{labels}}}"] == 28
        assert samples[f"torchspark_request_success_total{{{labels}}}"] == 2
        assert samples[f"torchspark_rows_quarantined_total{{{labels}}}"] == 3
        assert samples[f'torchspark_output_nonfinite_total{{{labels},output="y"}}'] == 2
        # The output statistics: 28 rows of the MLP on ones, against eager PyTorch.
        with torch.no_grad():
            row = models.module("mlp")(torch.ones(1, 8))[0].double()
        y = f'{labels},output="y"'
        assert samples[f"torchspark_output_values{{{y}}}"] == 28 * row.numel()
        assert samples[f"torchspark_output_sum{{{y}}}"] == pytest.approx(28 * float(row.sum()))
        squares = 28 * float((row**2).sum())
        assert samples[f"torchspark_output_sum_squares{{{y}}}"] == pytest.approx(squares)
        assert samples[f"torchspark_output_min{{{y}}}"] == pytest.approx(float(row.min()))
        assert samples[f"torchspark_output_max{{{y}}}"] == pytest.approx(float(row.max()))
        assert samples[f"torchspark_request_duration_seconds_count{{{labels}}}"] == 2
        # 28 rows in calls of at most 8 rows: at least 4 calls, every one <= 8.
        calls = samples[f"torchspark_batch_rows_count{{{labels}}}"]
        assert calls >= 4 and samples[f"torchspark_batch_rows_sum{{{labels}}}"] == 28
        le8 = labels.replace('executor="unknown",', 'executor="unknown",le="8.0",')
        assert samples[f"torchspark_batch_rows_bucket{{{le8}}}"] == calls
        assert samples[f"torchspark_compute_duration_seconds_count{{{labels}}}"] == calls
    finally:
        info = metrics_server.read_address(base)
        if info is not None:  # it watches this process: stopped here
            os.kill(int(info["pid"]), signal.SIGTERM)
