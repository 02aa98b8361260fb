"""Drift statistics (torchspark.spark.sketch, .drift, .batch_observer) and Report.compare.

The sketch's quantiles are checked against numpy's (``method="lower"``, the rank
the sketch promises) within its relative accuracy; merged statistics against
numpy on the union; the PSI against a numpy PSI over the same decile bins; the
statistics of real Spark jobs against numpy on the collected outputs.
"""

from __future__ import annotations

import math
import os
import pickle
import time
from typing import Any

import numpy as np
import pyarrow as pa
import pytest
import torch

import torchspark
from torchspark.spark.batch_observer import TIMELINE_POINTS, BatchObserver
from torchspark.spark.drift import ColumnStats, column_stats, merge, psi
from torchspark.spark.sketch import LogSketch

ACCURACY = 0.01
QUANTILES = [0.0, 0.001, 0.01, 0.1, 0.25, 0.5, 0.75, 0.9, 0.99, 0.999, 1.0]


def distributions(rng: np.random.Generator) -> dict[str, np.ndarray]:
    n = 50_000
    return {
        "normal": rng.normal(3.0, 2.0, n),
        "lognormal": rng.lognormal(0.0, 2.0, n),  # 7 orders of magnitude (the span is 9)
        "negative exponential": -rng.exponential(5.0, n),
        "uniform around 0": rng.uniform(-1.0, 1.0, n),
        "with zeros": np.where(rng.random(n) < 0.3, 0.0, rng.normal(0.0, 1.0, n)),
        "discrete": rng.integers(0, 3, n).astype(np.float64),
    }


def check_quantiles(sketch: LogSketch, values: np.ndarray) -> None:
    for q in QUANTILES:
        expected = np.quantile(values, q, method="lower")
        got = sketch.quantile(q)
        assert abs(got - expected) <= ACCURACY * abs(expected) * (1 + 1e-9), (q, got, expected)


@pytest.mark.parametrize(
    "name",
    ["normal", "lognormal", "negative exponential", "uniform around 0", "with zeros", "discrete"],
)
def test_sketch_quantiles_within_relative_accuracy(rng, name):
    values = distributions(rng)[name]
    sketch = LogSketch.of(values)
    assert sketch.count == values.size
    check_quantiles(sketch, values)


def test_sketch_one_value_and_empty():
    assert math.isnan(LogSketch().quantile(0.5))
    one = LogSketch.of(np.array([-7.25]))
    assert abs(one.quantile(0.0) + 7.25) <= ACCURACY * 7.25
    assert one.quantile(0.0) == one.quantile(1.0)


def test_sketch_merge_equals_the_union(rng):
    parts = [rng.normal(0.0, 10.0**k, 5_000) for k in range(-2, 4)]
    merged = LogSketch()
    for part in parts:
        merged.merge(LogSketch.of(part))
    union = LogSketch.of(np.concatenate(parts))
    assert merged.count == union.count
    for got, expected in zip(merged.buckets(), union.buckets(), strict=True):
        np.testing.assert_array_equal(got, expected)
    check_quantiles(merged, np.concatenate(parts))


def test_sketch_survives_pickling_compactly(rng):
    """Task records cross to the driver pickled: the same buckets, smaller."""
    values = rng.normal(0.0, 1.0, 20_000)
    sketch = LogSketch.of(values)
    again = pickle.loads(pickle.dumps(sketch))
    for got, expected in zip(again.buckets(), sketch.buckets(), strict=True):
        np.testing.assert_array_equal(got, expected)
    assert again.positive.counts.dtype == np.int64
    buckets = sketch.positive.counts.size + sketch.negative.counts.size
    assert len(pickle.dumps(sketch)) < 2 * buckets + 1024
    check_quantiles(again.merge(LogSketch.of(values)), np.concatenate([values, values]))


def test_sketch_stays_bounded_and_merge_still_equals_the_union(rng):
    """Values over 40 orders of magnitude: the lowest buckets collapse, the
    upper quantiles keep their accuracy, and merging still equals the union."""
    parts = [10.0 ** rng.uniform(-20, 20, 4_000) for _ in range(5)]
    merged = LogSketch(max_buckets=256)
    for part in parts:
        merged.merge(LogSketch.of(part, max_buckets=256))
    values = np.concatenate(parts)
    union = LogSketch.of(values, max_buckets=256)
    assert merged.positive.counts.size <= 256
    for got, expected in zip(merged.buckets(), union.buckets(), strict=True):
        np.testing.assert_array_equal(got, expected)
    # 256 buckets at 1% span a factor of ~1.6e2 below the maximum: quantiles up there hold.
    for q in (0.995, 0.999, 1.0):
        expected = np.quantile(values, q, method="lower")
        assert abs(union.quantile(q) - expected) <= ACCURACY * expected * (1 + 1e-9)


def test_column_stats_against_numpy_with_nan_inf_and_nulls(rng):
    values = rng.normal(1.0, 3.0, 10_000).astype(np.float32)
    values[::97] = np.nan
    values[5::101] = np.inf
    values[7::103] = -np.inf
    mask = np.zeros(values.size, dtype=bool)
    mask[3::89] = True
    stats = column_stats(pa.array(values, mask=mask))
    kept = values[~mask].astype(np.float64)
    finite = kept[np.isfinite(kept)]
    assert stats.nulls == mask.sum()
    assert stats.nan == np.isnan(kept).sum()
    assert stats.inf == np.isinf(kept).sum()
    assert stats.count == finite.size
    assert stats.mean == pytest.approx(finite.mean(), rel=1e-12)
    assert stats.std == pytest.approx(finite.std(), rel=1e-12)
    assert (stats.min, stats.max) == (finite.min(), finite.max())
    check_quantiles(stats.sketch, finite)


def test_column_stats_of_array_columns(rng):
    narrow = rng.normal(size=(300, 3)).astype(np.float32)
    offsets = pa.array(np.arange(0, narrow.size + 1, 3, dtype=np.int32))
    column = pa.ListArray.from_arrays(offsets, pa.array(narrow.ravel())).slice(10, 250)
    stats: dict[str, ColumnStats] = {}
    column_stats(column, stats, "logits")
    assert sorted(stats) == ["logits", "logits[0]", "logits[1]", "logits[2]"]
    part = narrow[10:260].astype(np.float64)
    assert stats["logits"].count == part.size
    assert stats["logits"].mean == pytest.approx(part.mean(), rel=1e-12)
    for i in range(3):
        assert stats[f"logits[{i}]"].mean == pytest.approx(part[:, i].mean(), rel=1e-12)
        assert stats[f"logits[{i}]"].std == pytest.approx(part[:, i].std(), rel=1e-12)
    # Wider than 8, or ragged: only the statistics over all values.
    wide = rng.normal(size=(20, 16))
    wide_column = pa.array(list(wide))
    stats = {}
    column_stats(wide_column, stats, "embedding")
    assert list(stats) == ["embedding"] and stats["embedding"].count == wide.size
    ragged: dict[str, ColumnStats] = {}
    column_stats(pa.array([[1.0], [2.0, 3.0]]), ragged, "r")
    assert list(ragged) == ["r"] and ragged["r"].mean == 2.0
    # Integers count; strings are left out.
    assert column_stats(pa.array([1, 2, 3], pa.int64())).mean == 2.0
    assert column_stats(pa.array(["a"])) is None


def test_merged_stats_equal_numpy_on_the_union(rng):
    parts = [rng.normal(k, 1.0 + k, 1_000 * (k + 1)) for k in range(5)]
    merged = merge([{"y": column_stats(pa.array(p))} for p in parts] + [{}])
    union = np.concatenate(parts)
    y = merged["y"]
    assert y.count == union.size
    assert y.mean == pytest.approx(union.mean(), rel=1e-12)
    assert y.std == pytest.approx(union.std(), rel=1e-10)
    assert (y.min, y.max) == (union.min(), union.max())
    check_quantiles(y.sketch, union)


def numpy_psi(current: np.ndarray, reference: np.ndarray, bins: int = 10) -> float:
    edges = np.unique(np.quantile(reference, np.arange(1, bins) / bins, method="lower"))
    p = np.bincount(np.searchsorted(edges, current, side="left"), minlength=edges.size + 1)
    q = np.bincount(np.searchsorted(edges, reference, side="left"), minlength=edges.size + 1)
    p = np.maximum(p / current.size, 1e-4)
    q = np.maximum(q / reference.size, 1e-4)
    return float(np.sum((p - q) * np.log(p / q)))


def test_psi_near_zero_for_the_same_distribution_and_large_when_shifted(rng):
    reference = rng.normal(0.0, 1.0, 50_000)
    same = rng.normal(0.0, 1.0, 50_000)
    shifted = rng.normal(0.5, 1.0, 50_000)
    wider = rng.normal(0.0, 2.0, 50_000)
    ref = LogSketch.of(reference)
    assert psi(ref, ref) == 0.0
    assert psi(LogSketch.of(same), ref) < 0.01
    for current in (same, shifted, wider):
        # Bins cut at bucket values instead of exact deciles: close to numpy's PSI.
        assert psi(LogSketch.of(current), ref) == pytest.approx(
            numpy_psi(current, reference), abs=0.02
        )
    assert psi(LogSketch.of(shifted), ref) > 0.2
    assert psi(LogSketch.of(wider), ref) > 0.25
    # A discrete output (three classes): fewer bins, still a PSI.
    classes = rng.choice(3, 20_000, p=[0.2, 0.3, 0.5]).astype(float)
    moved = rng.choice(3, 20_000, p=[0.5, 0.3, 0.2]).astype(float)
    assert psi(LogSketch.of(moved), LogSketch.of(classes)) == pytest.approx(
        numpy_psi(moved, classes), rel=0.05
    )
    assert math.isnan(psi(LogSketch(), ref))


def test_observer_fills_outputs_inputs_and_a_bounded_timeline():
    stats: dict[str, Any] = {
        "start": time.time(),
        "output_stats": {},
        "input_stats": {},
        "timeline": [],
    }
    observe = BatchObserver(keep=["id"], inputs=["x", "name", "absent"], stats=stats)
    for i in range(3 * TIMELINE_POINTS):
        batch = pa.record_batch({"id": [i, i], "x": [1.0, 3.0], "name": ["a", "b"]})
        observe(batch, pa.record_batch({"id": [i, i], "y": [float(i), float(i)]}), 0.0)
    assert list(stats["output_stats"]) == ["y"]
    assert list(stats["input_stats"]) == ["x"]
    assert stats["input_stats"]["x"].mean == 2.0
    y = np.repeat(np.arange(3 * TIMELINE_POINTS, dtype=float), 2)
    assert stats["output_stats"]["y"].mean == pytest.approx(y.mean())
    timeline = stats["timeline"]
    assert len(timeline) <= TIMELINE_POINTS + 1
    assert timeline[0][1] == 2 and timeline[-1][1] == y.size
    assert [p[1] for p in timeline] == sorted(p[1] for p in timeline)


def test_observer_drops_statistics_that_fail_but_not_the_batch(monkeypatch):
    from torchspark.spark import batch_observer

    stats: dict[str, Any] = {"start": 0.0, "output_stats": {}, "input_stats": {}, "timeline": []}
    observe = BatchObserver(keep=[], inputs=[], stats=stats)
    observe(None, pa.record_batch({"y": [1.0]}), 0.0)
    assert list(stats["output_stats"]) == ["y"]

    def fails(*args: Any) -> None:
        raise MemoryError("no room")

    monkeypatch.setattr(batch_observer, "column_stats", fails)
    observe(None, pa.record_batch({"y": [2.0, 3.0]}), 0.0)
    observe(None, pa.record_batch({"y": [4.0]}), 0.0)
    assert stats["output_stats"] == {} and observe.broken
    assert [p[1] for p in stats["timeline"]] == [1, 3, 4]


# ---------------------------------------------------------------------------
# Real Spark jobs


class TwoHeads(torch.nn.Module):
    """features [N, 4] -> (score [N], logits [N, 3])."""

    def __init__(self, scale: float = 1.0) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.lin = torch.nn.Linear(4, 3)
        self.scale = scale

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.lin(x) * self.scale
        return logits.sum(1), logits


ROWS = 4000
PARTITIONS = 4


@pytest.fixture(scope="module")
def model_paths(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    folder = tmp_path_factory.mktemp("drift_models")
    return {
        name: torchspark.export(TwoHeads(scale), torch.randn(4, 4), os.path.join(folder, name))
        for name, scale in (("base.pt", 1.0), ("scaled.pt", 3.0))
    }


def features(spark: Any, shift: float = 0.0, seed: int = 0) -> Any:
    columns = ", ".join(f"cast(randn({seed * 10 + i}) + {shift} as float)" for i in range(4))
    return spark.range(0, ROWS, 1, PARTITIONS).selectExpr("id", f"array({columns}) as features")


def scored_job(df: Any, path: str, **options: Any) -> tuple[Any, pa.Table]:
    table = torchspark.predict(
        df, path, inputs="features", output=["score", "logits"], **options
    ).toArrow()
    report = torchspark.last_report()
    assert report is not None and report.rows == ROWS and report.tasks == PARTITIONS
    return report, table


def column(table: pa.Table, name: str) -> np.ndarray:
    return np.asarray(table.column(name).to_pylist(), dtype=np.float64)


def check_against_numpy(stats: ColumnStats, values: np.ndarray) -> None:
    assert stats.count == values.size and stats.nan == stats.inf == stats.nulls == 0
    assert stats.mean == pytest.approx(values.mean(), rel=1e-9, abs=1e-12)
    assert stats.std == pytest.approx(values.std(), rel=1e-9)
    assert (stats.min, stats.max) == (values.min(), values.max())
    check_quantiles(stats.sketch, values)


def test_compare_two_spark_jobs(spark, model_paths):
    """A reference job, the same model on new data of the same distribution,
    on shifted data, and a changed model: output statistics match numpy on the
    collected outputs, and compare() scores the drift like a numpy PSI."""
    reference, ref_table = scored_job(features(spark), model_paths["base.pt"], keep=["id"])
    assert reference.input_stats == {}  # opt-in
    assert sorted(reference.output_stats) == [
        "logits",
        "logits[0]",
        "logits[1]",
        "logits[2]",
        "score",
    ]
    ref_score, ref_logits = column(ref_table, "score"), column(ref_table, "logits")
    check_against_numpy(reference.output_stats["score"], ref_score)
    check_against_numpy(reference.output_stats["logits"], ref_logits.ravel())
    check_against_numpy(reference.output_stats["logits[2]"], ref_logits[:, 2])

    # Same distribution, new sample, and through the arrow_udf route (every column kept).
    same, same_table = scored_job(features(spark, seed=1), model_paths["base.pt"])
    comparison = same.compare(reference)
    assert comparison.drifted() == [] and comparison.missing == []
    assert comparison.outputs["score"].psi == pytest.approx(
        numpy_psi(column(same_table, "score"), ref_score), abs=0.02
    )
    assert comparison.outputs["score"].psi < 0.1 and comparison.outputs["score"].level == "none"

    shifted, shifted_table = scored_job(features(spark, shift=3.0), model_paths["base.pt"])
    drift = shifted.compare(reference).outputs["score"]
    score = column(shifted_table, "score")
    assert drift.psi == pytest.approx(numpy_psi(score, ref_score), abs=0.02)
    assert drift.psi > 0.25 and drift.level == "significant"
    assert drift.mean_shift == pytest.approx((score.mean() - ref_score.mean()) / ref_score.std())

    changed, changed_table = scored_job(features(spark), model_paths["scaled.pt"], keep=["id"])
    comparison = changed.compare(reference)
    assert "score" in comparison.drifted() and "logits" in comparison.drifted()
    assert comparison.outputs["score"].std_ratio == pytest.approx(
        column(changed_table, "score").std() / ref_score.std()
    )
    assert "PSI" in str(comparison)


def test_input_stats_opt_in(spark, model_paths):
    df = features(spark, shift=0.5)
    report, _ = scored_job(df, model_paths["base.pt"], keep=["id"], input_stats=True)
    x = np.asarray(df.toArrow().column("features").to_pylist(), dtype=np.float64)
    assert sorted(report.input_stats) == ["features"] + [f"features[{i}]" for i in range(4)]
    check_against_numpy(report.input_stats["features"], x.ravel())
    check_against_numpy(report.input_stats["features[1]"], x[:, 1])
    # The arrow_udf route takes the option too; compared with a job without, inputs are skipped.
    with_inputs, _ = scored_job(features(spark), model_paths["base.pt"], input_stats=True)
    comparison = with_inputs.compare(report)
    assert comparison.inputs["features"].psi > 0.05
    assert comparison.inputs["features"].mean_shift == pytest.approx(
        -0.5 / x.ravel().std(), abs=0.1
    )
    without, _ = scored_job(features(spark), model_paths["base.pt"], keep=["id"])
    assert without.input_stats == {} and without.compare(report).inputs == {}
