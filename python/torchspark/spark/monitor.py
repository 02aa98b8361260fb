"""Turning live metrics and progress on: the Spark confs, and the driver's side.

One option turns the metrics on, as ``spark.ui.prometheus.enabled`` does for
Spark's own: ``spark.torchspark.metrics.enabled=true``, in the session's conf
(``--conf`` to spark-submit, the builder, or ``spark.conf.set`` before the
``predict`` call). Then every executor serves ``/metrics`` on a port of
``spark.torchspark.metrics.ports`` (default 9450-9469), and the driver serves
the job so far at ``/metrics`` and the executors' addresses at ``/targets`` on
a port of ``spark.torchspark.metrics.driverPorts`` (default 9440-9449)::

    spark = (SparkSession.builder
             .config("spark.torchspark.metrics.enabled", "true")
             .getOrCreate())
    torchspark.predict(df, "model.pt", inputs="features").write.parquet("out")
    # curl http://<driver>:9440/metrics ; curl http://<driver>:9440/targets

:func:`settings` is called on the driver for each function made
(``predict``, ``arrow_predictor``, ``torch_udf``); it starts the driver's side
once per SparkContext (:class:`DriverMonitor`) and returns what the tasks need
(:class:`Settings`, pickled with the function).
"""

from __future__ import annotations

import logging
import secrets
import threading
from dataclasses import dataclass
from typing import Any

from .ports import parse_ports

logger = logging.getLogger("torchspark")

ENABLED = "spark.torchspark.metrics.enabled"
PORTS = "spark.torchspark.metrics.ports"
DRIVER_PORTS = "spark.torchspark.metrics.driverPorts"
DIRECTORY = "spark.torchspark.metrics.dir"  # the executors' metrics files (default: temp dir)
DEFAULT_PORTS = "9450-9469"
DEFAULT_DRIVER_PORTS = "9440-9449"


@dataclass(frozen=True)
class Settings:
    """What a task needs: pickled from the driver with the function."""

    run: str
    application: str
    token: str  # the driver drops datagrams without it
    live: tuple[str, int] | None  # the driver's live channel (UDP), or None
    metrics: bool  # executors keep Prometheus metrics and serve them
    ports: str  # the executors' port range
    directory: str | None  # where executors keep their metrics files (None: temp dir)


class DriverMonitor:
    """The driver's side, one per SparkContext: the live channel's receiver,
    the progress line and, with metrics on, the ``/metrics`` endpoint."""

    def __init__(self, sc: Any) -> None:
        from .live import Receiver

        conf = sc.getConf()
        self.application = sc.applicationId
        self.host = conf.get("spark.driver.host", None) or "localhost"
        self.token = secrets.token_hex(8)
        self.receiver = Receiver(self.token, conf.get("spark.driver.bindAddress", None) or "")
        self.receiver.listen(self._on_message)
        self.endpoint: Any = None
        self.progress: Any = None
        self._executors: set[str] = set()
        self._lock = threading.Lock()

    def _on_message(self, message: dict[str, Any]) -> None:
        address = message.get("address")
        if address and address not in self._executors:
            with self._lock:
                if address in self._executors:
                    return
                self._executors.add(address)
            logger.info(
                "torchspark: executor %s serves its metrics at http://%s/metrics",
                message.get("executor"),
                address,
            )

    def serve(self, ports: range) -> str:
        """The driver's ``/metrics`` address, served from now on."""
        with self._lock:
            if self.endpoint is None:
                from .job_metrics import Endpoint

                self.endpoint = Endpoint(self.receiver, self.application, self.host, ports)
                logger.warning(
                    "torchspark: the job's metrics at http://%s/metrics, executors' at /targets",
                    self.endpoint.address,
                )
            return self.endpoint.address

    def track(self, run: str, df: Any) -> None:
        with self._lock:
            if self.progress is None:
                from .progress import Progress

                self.progress = Progress(self.receiver)
        self.progress.track(run, df)

    def close(self) -> None:
        if self.endpoint is not None:
            self.endpoint.close()
        if self.progress is not None:
            self.progress.close()
        self.receiver.close()


_monitors: dict[int, DriverMonitor] = {}  # id(SparkContext) -> its monitor
_monitors_lock = threading.Lock()


def driver_monitor(sc: Any) -> DriverMonitor:
    """``sc``'s monitor, started at the first call (a stopped context's closed)."""
    with _monitors_lock:
        for key in [k for k, m in _monitors.items() if k != id(sc) and _stopped(m)]:
            _monitors.pop(key).close()
        monitor = _monitors.get(id(sc))
        if monitor is None:
            monitor = _monitors[id(sc)] = DriverMonitor(sc)
        return monitor


def _stopped(monitor: DriverMonitor) -> bool:
    from pyspark import SparkContext

    active = SparkContext._active_spark_context
    return active is None or active.applicationId != monitor.application


def enabled(spark: Any) -> bool:
    return str(spark.conf.get(ENABLED, "false")).strip().lower() == "true"


def settings(spark: Any, run: str, progress: Any = None) -> Settings | None:
    """What the tasks of ``run`` need, the driver's side started; None when
    neither metrics (:data:`ENABLED`) nor progress is on (``progress``: the
    DataFrame whose scoring the progress line follows, or None)."""
    metrics = enabled(spark)
    if not metrics and progress is None:
        return None
    ports, driver_ports, directory = DEFAULT_PORTS, None, None
    if metrics:  # bad ranges fail here, on the driver
        ports = str(spark.conf.get(PORTS, DEFAULT_PORTS))
        parse_ports(ports, PORTS)
        driver_ports = parse_ports(spark.conf.get(DRIVER_PORTS, DEFAULT_DRIVER_PORTS), DRIVER_PORTS)
        directory = spark.conf.get(DIRECTORY, None) or None
    try:
        sc = spark.sparkContext
    except Exception:  # Spark Connect: no driver process of ours; executors only
        if not metrics:
            return None
        return Settings(
            run, spark.conf.get("spark.app.id", "unknown"), "", None, metrics, ports, directory
        )
    monitor = driver_monitor(sc)
    if driver_ports is not None:
        monitor.serve(driver_ports)
    if progress is not None:
        monitor.track(run, progress)
    return Settings(
        run,
        monitor.application,
        monitor.token,
        (monitor.host, monitor.receiver.port),
        metrics,
        ports,
        directory,
    )
