"""Live metrics: Engine.histograms, the Prometheus instruments (spark/metrics.py),
the port range (spark/ports.py), the executor server (spark/metrics_server.py),
the live channel and the driver's endpoint, and a real Prometheus server
scraping a ``local-cluster`` job (tests/spark_metrics_job.py).

Every wait is bounded; every process a test starts is stopped by it.
"""

from __future__ import annotations

import bisect

import pytest
import torch
from models import FEATURES, ModelFiles

from torchspark import Engine


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
