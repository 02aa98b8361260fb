"""torchspark.Engine: batching, Arrow inputs, errors, closing and loading,
always checked against eager PyTorch on the same rows.

Models are tiny (tests/models.py) and exported once per session. Every wait on
the engine has a timeout, so a hang fails a test instead of the run.
"""

from __future__ import annotations

import gc
import hashlib
import re
import struct
import subprocess
import sys
import textwrap
import threading
import time
import warnings
import weakref
import zipfile
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import torch
from models import FEATURES, OOM_ROWS, VOCAB, ModelFiles

import torchspark
from torchspark import Engine, EngineClosedError, Input, ModelError, NullValueError

TIMEOUT = 30.0


@pytest.fixture(scope="session")
def models(tmp_path_factory: pytest.TempPathFactory) -> ModelFiles:
    return ModelFiles(tmp_path_factory.mktemp("models"))


def eager(module: torch.nn.Module, *inputs: torch.Tensor):
    with torch.no_grad():
        return module(*inputs)


def results(futures, timeout: float = TIMEOUT):
    return [f.result(timeout=timeout) for f in futures]


def tokens_batch(rows: list[list[int]]) -> pa.RecordBatch:
    return pa.record_batch({"tokens": pa.array(rows, pa.list_(pa.int64()))})


def run_threads(target: Callable[[int], None], n: int, errors: list[BaseException]) -> None:
    """Run target(0..n-1) on n threads at once; fail if one hangs or reported an error."""
    threads = [threading.Thread(target=target, args=(t,)) for t in range(n)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(TIMEOUT)
    assert not any(thread.is_alive() for thread in threads)
    assert not errors, errors


def ragged(rng: np.random.Generator, n: int, low: int, high: int) -> list[list[int]]:
    return [rng.integers(1, VOCAB, int(rng.integers(low, high + 1))).tolist() for _ in range(n)]


# ---------------------------------------------------------------------------
# TorchScript: inputs, outputs, run / submit / map


def test_run_single_input_mlp(models):
    x = torch.randn(37, FEATURES)
    with Engine(models.path("mlp"), batch_size=16) as ex:
        out = ex.run(x)
    assert out.dtype == torch.float32 and out.shape == (37, 4)
    torch.testing.assert_close(out, eager(models.module("mlp"), x))


def test_submit_future_api(models):
    x = torch.randn(21, FEATURES)
    with Engine(models.path("mlp"), max_delay_ms=60_000) as ex:
        future = ex.submit(x)
        assert isinstance(future, torchspark.Future)
        assert future.rows == 21
        # Nothing forces the partial batch out yet: it waits for more rows.
        with pytest.raises(TimeoutError):
            future.result(timeout=0.05)
        ex.flush()
        assert future.wait(TIMEOUT)
        assert future.done()
        out = future.result(timeout=TIMEOUT)
        torch.testing.assert_close(out, eager(models.module("mlp"), x))
        # A second result() gives the same outputs.
        assert future.result() is out


def test_multi_input_positional_and_by_name(models):
    module = models.module("two_input")
    x, y = torch.randn(13, FEATURES), torch.randn(13, 3)
    expected = eager(module, x, y)
    with Engine(models.path("two_input")) as ex:
        assert list(ex.model.input_names) == ["x", "y"]
        torch.testing.assert_close(ex.run((x, y)), expected)
        torch.testing.assert_close(ex.run([x, y]), expected)
        # By name, in any order of the dict.
        torch.testing.assert_close(ex.run({"y": y, "x": x}), expected)
        with pytest.raises(ValueError, match="missing"):
            ex.submit({"x": x})
        with pytest.raises(ValueError, match="unexpected"):
            ex.submit({"x": x, "y": y, "z": y})


def test_tuple_outputs(models):
    module = models.module("tuple_out")
    parts = [torch.randn(n, FEATURES) for n in (3, 9, 1)]
    with Engine(models.path("tuple_out"), max_delay_ms=200) as ex:
        futures = [ex.submit(x) for x in parts]
        ex.flush()
        for x, out in zip(parts, results(futures), strict=True):
            assert isinstance(out, tuple) and len(out) == 3
            expected = eager(module, x)
            for got, want in zip(out, expected, strict=True):
                assert got.dtype == want.dtype and got.shape == want.shape
                torch.testing.assert_close(got, want)


def test_dict_outputs(models):
    module = models.module("dict_out")
    inputs = [(torch.randn(n, 4), torch.randn(n, 4)) for n in (5, 2)]
    with Engine(models.path("dict_out"), max_delay_ms=200) as ex:
        futures = [ex.submit({"x": x, "y": y}) for x, y in inputs]
        ex.flush()
        for (x, y), out in zip(inputs, results(futures), strict=True):
            assert isinstance(out, dict) and set(out) == {"sum", "score"}
            expected = eager(module, x, y)
            for key in expected:
                torch.testing.assert_close(out[key], expected[key])


def test_export_dict_output_model(models, tmp_path):
    module = models.module("dict_out")
    x, y = torch.randn(4, 4), torch.randn(4, 4)
    path = torchspark.export(module, (x, y), tmp_path / "dict.pt")
    with Engine(path) as ex:
        out = ex.run((x, y))
    expected = eager(module, x, y)
    for key in expected:
        torch.testing.assert_close(out[key], expected[key])


def test_map_over_generator(models):
    module = models.module("mlp")
    sizes = [1, 5, 17, 3, 30, 2, 11, 8, 0, 9, 40, 6]
    inputs = [torch.randn(n, FEATURES) for n in sizes]

    def produce():
        yield from inputs

    with Engine(models.path("mlp"), batch_size=16, inflight=2) as ex:
        outs = list(ex.map(produce()))
    assert len(outs) == len(inputs)
    for x, out in zip(inputs, outs, strict=True):
        torch.testing.assert_close(out, eager(module, x))


def test_map_closed_early_then_reused(models):
    module = models.module("mlp")
    inputs = [torch.randn(10, FEATURES) for _ in range(20)]
    consumed = []

    def produce():
        for x in inputs:
            consumed.append(x)
            yield x

    with Engine(models.path("mlp"), batch_size=8, inflight=2) as ex:
        it = ex.map(produce())
        first = [next(it) for _ in range(3)]
        it.close()
        assert len(consumed) < len(inputs)
        for x, out in zip(inputs, first, strict=False):
            torch.testing.assert_close(out, eager(module, x))
        # The engine keeps serving after the abandoned map.
        x = torch.randn(7, FEATURES)
        torch.testing.assert_close(ex.run(x), eager(module, x))
        again = list(ex.map(iter(inputs[:4])))
        for x, out in zip(inputs[:4], again, strict=True):
            torch.testing.assert_close(out, eager(module, x))


# ---------------------------------------------------------------------------
# Batching


def test_small_submissions_are_coalesced(models, rng):
    sizes = rng.integers(1, 4, 60).tolist()
    start = 0
    inputs = []
    for n in sizes:
        inputs.append(torch.arange(start, start + 2 * n, dtype=torch.long).view(n, 2))
        start += 2 * n
    with Engine(models.path("rows"), batch_size=1024, max_delay_ms=200) as ex:
        futures = [ex.submit(ids) for ids in inputs]
        ex.flush()
        outs = results(futures)
        stats = ex.stats()
    for ids, (doubled, _) in zip(inputs, outs, strict=True):
        assert torch.equal(doubled, ids * 2 + 1)
    assert stats["requests"] == 60
    assert stats["rows"] == sum(sizes)
    assert 1 <= stats["batches"] < 60
    assert max(int(c.max()) for _, c in outs) > 3  # a model call saw several submissions
    assert stats["mean_batch_rows"] == pytest.approx(sum(sizes) / stats["batches"])


def test_big_submission_is_split(models):
    ids = torch.arange(200, dtype=torch.long).view(100, 2)
    with Engine(models.path("rows"), batch_size=16) as ex:
        doubled, call_rows = ex.run(ids)
        stats = ex.stats()
    assert torch.equal(doubled, ids * 2 + 1)
    assert stats["batches"] == 7  # 6 x 16 + 4
    assert call_rows.tolist() == [16] * 96 + [4] * 4


def test_zero_row_submission(models):
    module = models.module("mlp")
    with Engine(models.path("mlp")) as ex:
        out = ex.run(torch.empty(0, FEATURES))
        assert out.shape == (0, 4) and out.dtype == torch.float32
        # Between other submissions of one batch.
        a, b = torch.randn(3, FEATURES), torch.randn(4, FEATURES)
        futures = [ex.submit(a), ex.submit(torch.empty(0, FEATURES)), ex.submit(b)]
        ex.flush()
        out_a, out_empty, out_b = results(futures)
    torch.testing.assert_close(out_a, eager(module, a))
    assert out_empty.shape == (0, 4)
    torch.testing.assert_close(out_b, eager(module, b))


def test_zero_rows_tuple_outputs(models):
    with Engine(models.path("tuple_out")) as ex:
        out = ex.run(torch.empty(0, FEATURES))
    assert [tuple(t.shape) for t in out] == [(0, 4), (0,), (0,)]
    assert out[2].dtype == torch.int64


def test_single_row(models):
    x = torch.randn(1, FEATURES)
    with Engine(models.path("mlp")) as ex:
        out = ex.run(x)
    torch.testing.assert_close(out, eager(models.module("mlp"), x))


@pytest.mark.parametrize("workers", [1, 2])
def test_concurrent_submitters_do_not_mix(models, workers):
    per_thread, n_threads = 40, 4
    outcomes: dict[int, list[tuple[torch.Tensor, object]]] = {}
    errors: list[BaseException] = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # oversubscription warning
        ex = Engine(models.path("rows"), batch_size=32, max_delay_ms=1, threads=workers)

    def submitter(t: int) -> None:
        try:
            local_rng = np.random.default_rng(t)
            mine = []
            for i in range(per_thread):
                n = int(local_rng.integers(1, 10))
                base = (t * per_thread + i) * 100
                ids = torch.arange(base, base + 2 * n, dtype=torch.long).view(n, 2)
                future = ex.submit(ids)
                if i % 3 == 0:  # some wait at once, some later
                    future.result(timeout=TIMEOUT)
                mine.append((ids, future))
            outcomes[t] = mine
        except BaseException as e:  # reported below
            errors.append(e)

    with ex:
        run_threads(submitter, n_threads, errors)
        ex.flush()
        total = 0
        for mine in outcomes.values():
            for ids, future in mine:
                doubled, _ = future.result(timeout=TIMEOUT)
                assert torch.equal(doubled, ids * 2 + 1)
                total += ids.shape[0]
        stats = ex.stats()
    assert stats["requests"] == per_thread * n_threads
    assert stats["rows"] == total


def test_concurrent_inline_runs_maps_and_submits_do_not_mix(models):
    """Threads calling run (inline when the engine is idle), map and submit on
    one engine: every output is its own input's, and the engine ends idle with
    every row counted once."""
    n_threads, per_thread, rows = 4, 96, 8
    errors: list[BaseException] = []

    def ids(t: int, i: int) -> torch.Tensor:
        base = (t * per_thread + i) * 100
        return torch.arange(base, base + rows, dtype=torch.long).view(rows, 1)

    def caller(t: int, ex: Engine) -> None:
        try:
            items = [ids(t, i) for i in range(per_thread)]
            if t % 3 == 0:
                outs = [ex.run(x) for x in items]
            elif t % 3 == 1:
                outs = list(ex.map(items))
            else:
                futures = [ex.submit(x) for x in items]
                ex.flush()
                outs = [f.result(timeout=TIMEOUT) for f in futures]
            for x, (doubled, _) in zip(items, outs, strict=True):
                assert torch.equal(doubled, x * 2 + 1)
        except BaseException as e:  # reported below
            errors.append(e)

    with Engine(models.path("rows"), batch_size=rows, max_delay_ms=1, inline_below_ms=1e3) as ex:
        ex.run(ids(99, 0))  # measured once: inline is possible from here on
        run_threads(lambda t: caller(t, ex), n_threads, errors)
        stats = ex.stats()
    assert stats["requests"] == n_threads * per_thread + 1
    assert stats["rows"] == (n_threads * per_thread + 1) * rows
    assert stats["inline_batches"] > 0


def test_outputs_are_writable_and_independent(models):
    module = models.module("mlp")
    x = torch.randn(9, FEATURES)
    with Engine(models.path("mlp")) as ex:
        out = ex.run(x)
        assert not out.requires_grad
        out.add_(1)  # not an inference tensor: callers may modify it
        torch.testing.assert_close(out, eager(module, x) + 1)
        torch.testing.assert_close(ex.run(x), eager(module, x))


def test_outputs_aliasing_the_staging_buffer_survive_later_batches(models):
    """An identity model returns the staged batch itself; the engine reuses
    that buffer for later batches, so results must not alias it."""
    with Engine(models.path("identity"), batch_size=64, max_delay_ms=200) as ex:
        kept = []
        for round_ in range(3):
            parts = [torch.full((n, FEATURES), float(10 * round_ + n)) for n in (3, 5)]
            futures = [ex.submit(p) for p in parts]  # coalesced: one staged batch
            ex.flush()
            kept.extend(zip(parts, results(futures), strict=True))
        for x, (same, first) in kept:
            assert torch.equal(same, x)
            assert torch.equal(first, x[:, 0])
        # Writing one result touches neither the other results nor the inputs.
        (x0, (same0, _)), (x1, (same1, _)) = kept[0], kept[1]
        same0.fill_(-1)
        assert torch.equal(same1, x1) and (x0 != -1).all()


def test_non_contiguous_inputs(models):
    module = models.module("mlp")
    wide = torch.randn(30, 2 * FEATURES)
    parts = [wide[:10, ::2], wide[10:, 1::2], torch.randn(FEATURES, 6).t()]
    assert not any(p.is_contiguous() for p in parts)
    with Engine(models.path("mlp"), max_delay_ms=100) as ex:
        torch.testing.assert_close(ex.run(parts[0]), eager(module, parts[0]))  # alone
        futures = [ex.submit(p) for p in parts]  # coalesced
        ex.flush()
        for x, out in zip(parts, results(futures), strict=True):
            torch.testing.assert_close(out, eager(module, x))


def test_map_propagates_model_error(models):
    items = [torch.ones(2, 2), -torch.ones(2, 2), torch.ones(2, 2)]
    with Engine(models.path("negative_raises"), batch_size=2, inflight=1) as ex:
        it = ex.map(iter(items))
        torch.testing.assert_close(next(it), items[0] * 2 + 1)
        with pytest.raises(ModelError, match="negative input"):
            next(it)
        torch.testing.assert_close(ex.run(items[2]), items[2] * 2 + 1)


def test_mixed_arity_rejected(models):
    x, y = torch.randn(3, FEATURES), torch.randn(3, 3)
    with Engine(models.path("two_input")) as ex:
        ex.run((x, y))
        with pytest.raises(ValueError, match="same inputs"):
            ex.submit((x,))
        with pytest.raises(ValueError, match="rows"):
            ex.submit((x, y[:2]))
        with pytest.raises(TypeError):
            ex.submit("not a tensor")


def test_static_batch_identical_results(models):
    parts = [torch.arange(s, s + 2 * n, dtype=torch.long).view(n, 2) for s, n in ((0, 5), (9, 40))]
    parts.append(torch.empty(0, 2, dtype=torch.long))
    with Engine(models.path("rows"), batch_size=16, static_batch=True, max_delay_ms=100) as ex:
        futures = [ex.submit(p) for p in parts]
        ex.flush()
        outs = results(futures)
    for ids, (doubled, call_rows) in zip(parts, outs, strict=True):
        assert torch.equal(doubled, ids * 2 + 1)
        assert (call_rows == 16).all()  # every model call saw batch_size rows

    module = models.module("mlp")
    x = torch.randn(37, FEATURES)
    with Engine(models.path("mlp"), batch_size=16, static_batch=True) as ex:
        torch.testing.assert_close(ex.run(x), eager(module, x))


def test_out_of_memory_split_matches_unsplit_run(models, test_ops):
    # The oom_* models raise c10::OutOfMemoryError (torch.ops.torchspark_test.
    # oom_above) for a call of more than OOM_ROWS rows, from inside the
    # TorchScript interpreter: the engine must recognise it there and split.
    ids = torch.arange(200, dtype=torch.long).view(100, 2)
    with Engine(models.path("rows"), batch_size=32) as ex:
        unsplit, unsplit_rows = ex.run(ids)
        assert ex.stats()["retries"] == 0
    with Engine(models.path("oom_rows"), batch_size=32) as ex:
        doubled, call_rows = ex.run(ids)
        stats = ex.stats()
    assert torch.equal(doubled, unsplit)
    assert torch.equal(doubled, ids * 2 + 1)
    assert int(unsplit_rows.max()) == 32
    assert int(call_rows.max()) <= OOM_ROWS  # the model never ran more rows
    assert stats["retries"] > 0
    assert stats["errors"] == 0

    module = models.module("mlp")
    x = torch.randn(70, FEATURES)
    with Engine(models.path("mlp"), batch_size=32) as ex:
        reference = ex.run(x)
    with Engine(models.path("oom_mlp"), batch_size=32) as ex:
        split = ex.run(x)
        assert ex.stats()["retries"] > 0
    torch.testing.assert_close(split, reference)
    torch.testing.assert_close(split, eager(module, x))


def test_out_of_memory_in_a_torchscript_model_reaches_the_engine_as_such(models, test_ops):
    # Without the split a batch that is out of memory fails naming it; with
    # static_batch (which cannot split) the error says so.
    x = torch.randn(OOM_ROWS + 3, FEATURES)
    with Engine(models.path("oom_mlp"), batch_size=16, static_batch=True) as ex:
        with pytest.raises(ModelError, match=r"out of memory on a static batch"):
            ex.run(x)
        assert ex.stats()["retries"] == 0


def test_stats_shape(models):
    with Engine(models.path("mlp"), batch_size=8) as ex:
        for n in (3, 20, 1):
            ex.run(torch.randn(n, FEATURES))
    # After close: a request's end-to-end latency is recorded just after its
    # waiter wakes, so stats() right after result() may not count it yet.
    stats = ex.stats()
    assert stats["requests"] == 3 and stats["rows"] == 24
    assert stats["batches"] >= 4 and stats["errors"] == 0 and stats["retries"] == 0
    assert stats["padding_ratio"] == 0
    for key in ("queue", "stage", "compute", "end_to_end"):
        lat = stats[key]
        assert set(lat) == {"count", "mean_ms", "p50_ms", "p90_ms", "p99_ms", "max_ms"}
        assert lat["count"] >= 3
        assert 0 <= lat["p50_ms"] <= lat["p90_ms"] <= lat["p99_ms"] <= lat["max_ms"]
        assert lat["mean_ms"] <= lat["max_ms"]
    assert stats["end_to_end"]["count"] == 3


# ---------------------------------------------------------------------------
# Arrow inputs


def test_arrow_gather_scalar_columns(models):
    module = models.module("features3")

    def batch(n: int, seed: int) -> pa.RecordBatch:
        r = np.random.default_rng(seed)
        return pa.record_batch(
            {
                "a": pa.array(r.normal(size=n), pa.float64()),
                "b": pa.array(r.integers(-50, 50, n), pa.int32()),
                "c": pa.array(r.integers(0, 1000, n), pa.int64()),
                "unused": pa.array(r.normal(size=n), pa.float64()),
            }
        )

    batches = [batch(n, i) for i, n in enumerate((10, 25, 1, 0, 7))]
    spec = Input(["a", "b", "c"])
    assert spec.resolved_kind == "gather"
    with Engine(models.path("features3"), inputs=[spec], batch_size=16, max_delay_ms=100) as ex:
        futures = [ex.submit(b) for b in batches]
        ex.flush()
        outs = results(futures)
    for b, out in zip(batches, outs, strict=True):
        x = torchspark.gather(b, ["a", "b", "c"], dtype=torch.float32)
        independent = torch.from_numpy(
            np.column_stack([b.column(k).to_numpy() for k in "abc"]).astype(np.float32)
        ).reshape(b.num_rows, 3)
        torch.testing.assert_close(x, independent)
        assert out.shape == (b.num_rows, 2)
        torch.testing.assert_close(out, eager(module, independent))


def test_arrow_tensor_list_column(models):
    module = models.module("features5")
    rng = np.random.default_rng(7)
    values = [rng.normal(size=(n, 5)).astype(np.float32) for n in (12, 3)]
    batches = [pa.record_batch({"v": pa.array(v.tolist(), pa.list_(pa.float32()))}) for v in values]
    with Engine(
        models.path("features5"), inputs=[Input("v", kind="tensor")], max_delay_ms=100
    ) as ex:
        futures = [ex.submit(b) for b in batches]
        ex.flush()
        outs = results(futures)
    for v, out in zip(values, outs, strict=True):
        torch.testing.assert_close(out, eager(module, torch.from_numpy(v)))


def test_arrow_many_small_numpy_backed_batches(models):
    """Zero-copy Arrow data (numpy buffers) through many submissions, some waited
    on at once: every output matches, nothing hangs."""
    module = models.module("features5")
    rng = np.random.default_rng(3)
    spec = Input("v", kind="tensor")
    pending = []
    with Engine(models.path("features5"), inputs=[spec], max_delay_ms=0.5) as ex:
        for i in range(120):
            values = rng.normal(size=(int(rng.integers(1, 9)), 5)).astype(np.float32)
            column = pa.FixedSizeListArray.from_arrays(pa.array(values.reshape(-1)), 5)
            future = ex.submit(pa.record_batch({"v": column}))
            if i % 5 == 0:
                torch.testing.assert_close(
                    future.result(timeout=TIMEOUT), eager(module, torch.from_numpy(values))
                )
            else:
                pending.append((values, future))
        for values, future in pending:
            torch.testing.assert_close(
                future.result(timeout=TIMEOUT), eager(module, torch.from_numpy(values))
            )


def test_arrow_without_inputs_spec_rejected(models):
    with Engine(models.path("features3")) as ex, pytest.raises(ValueError, match="Input"):
        ex.submit(pa.record_batch({"a": [1.0]}))


def test_input_spec_validation():
    assert Input("t").resolved_kind == "tensor"
    with pytest.raises(ValueError, match="kind"):
        Input("a", kind="bogus")
    with pytest.raises(ValueError, match="exactly one column"):
        Input(["a", "b"], kind="pad")
    with pytest.raises(ValueError, match="nulls"):
        Input("a", nulls="mask")


@pytest.mark.parametrize("max_tokens", [None, 4096])
def test_pad_input_matches_eager(models, rng, max_tokens):
    module = models.module("bag")
    rows = ragged(rng, 40, 0, 12)
    with Engine(
        models.path("bag"), inputs=[Input("tokens", kind="pad")], max_tokens=max_tokens
    ) as ex:
        bag, _, width = ex.run(tokens_batch(rows))
    assert int(width.max()) >= max(len(r) for r in rows)
    torch.testing.assert_close(bag, module.reference(rows))


def test_pad_coalesces_batches_of_different_widths(models):
    module = models.module("bag")
    parts = [[[1, 2, 3], [4], [5, 6, 7, 8, 9]], [[1, 2], [3]]]
    with Engine(
        models.path("bag"),
        inputs=[Input("tokens", kind="pad")],
        max_tokens=1000,
        max_delay_ms=200,
    ) as ex:
        futures = [ex.submit(tokens_batch(rows)) for rows in parts]
        ex.flush()
        outs = results(futures)
    for rows, (bag, _, _) in zip(parts, outs, strict=True):
        torch.testing.assert_close(bag, module.reference(rows))


@pytest.mark.parametrize("max_tokens", [None, 64])
def test_pad_all_empty_rows(models, max_tokens):
    spec = Input("tokens", kind="pad")
    with Engine(models.path("bag"), inputs=[spec], max_tokens=max_tokens) as ex:
        bag, _, _ = ex.run(tokens_batch([[], []]))
    torch.testing.assert_close(bag, torch.zeros(2, 3))


@pytest.mark.parametrize(
    "batching",
    [
        {},
        {"max_tokens": 40},
        {"max_tokens": 40, "sort_window": 16},
        {"batch_size": 3, "sort_window": 8},
    ],
    ids=["one_batch", "max_tokens", "max_tokens_sorted", "small_batches_sorted"],
)
@pytest.mark.parametrize("per_token", [[0], 0])
def test_per_token_outputs_come_back_at_the_submission_width(models, rng, batching, per_token):
    """Batches cut to their longest row (max_tokens), reordered (sort_window) or
    mixing several submissions: each per-token output has the submission's
    width, zero past each row's length, whatever the batching."""
    module = models.module("per_token")
    parts = [ragged(rng, 30, 0, 12), ragged(rng, 7, 1, 4), ragged(rng, 20, 0, 9)]
    with Engine(
        models.path("per_token"),
        inputs=[Input("tokens", kind="pad")],
        per_token=per_token,
        max_delay_ms=100,
        **batching,
    ) as ex:
        futures = [ex.submit(tokens_batch(rows)) for rows in parts]
        ex.flush()
        outs = results(futures)
        stats = ex.stats()
    for rows, (tokens, bag) in zip(parts, outs, strict=True):
        torch.testing.assert_close(tokens, module.reference(rows, max(len(r) for r in rows)))
        torch.testing.assert_close(bag, module.bag.reference(rows))
    if batching:
        assert stats["batches"] > len(parts)  # several widths met in one submission


def test_per_token_checks(models):
    spec = [Input("tokens", kind="pad")]
    with pytest.raises(ValueError, match="per_token: expected a padded token input"):
        Engine(models.path("per_token"), per_token=True)
    with pytest.raises(TypeError, match="per_token"):
        Engine(models.path("per_token"), inputs=spec, per_token=[1.5])
    rows = [[1, 2, 3, 4], [5]]  # width 4: not the bag's 3
    cases = [
        # Output 1 (the bag, [rows, 3]) is not per token: its dim 1 is not the width.
        ([1], rows, r"is per token but has shape \[1, 3\]; expected \[rows, 4, "),
        (True, rows, r"output 1 of batch \d+ is per token"),
        ("logits", rows, "per_token names output 'logits' but the model returned"),
        ([5], rows, "per_token names output 5 but the model returned 2"),
        # Without per_token, widths that differ between the batches of one
        # submission fail clearly, and say what to pass.
        (False, [[1], [2], [3, 4, 5], [6, 7, 8]], "needs per_token"),
    ]
    for per_token, batch_rows, message in cases:
        with (
            Engine(
                models.path("per_token"),
                inputs=spec,
                per_token=per_token,
                max_tokens=6,
                sort_window=0,
            ) as e,
            pytest.raises((ModelError, ValueError), match=message),
        ):
            e.run(tokens_batch(batch_rows))


def _tokens_dense_batch(seed: int, n: int) -> tuple[pa.RecordBatch, torch.Tensor, list]:
    rng = np.random.default_rng(seed)
    rows = ragged(rng, n, 1, 12)
    dense = rng.normal(size=(n, 3)).astype(np.float32)
    batch = pa.record_batch(
        {
            "a": dense[:, 0],
            "b": dense[:, 1],
            "c": dense[:, 2],
            "dense": pa.array(dense.tolist(), pa.list_(pa.float32())),
            "tokens": pa.array(rows, pa.list_(pa.int64())),
        }
    )
    return batch, torch.from_numpy(dense), rows


@pytest.mark.parametrize("sort_window", [0, 16])
def test_pad_with_tensor_input_keeps_rows_aligned(models, sort_window):
    module = models.module("tokens_dense")
    batch, dense, rows = _tokens_dense_batch(5, 40)
    specs = [Input("dense", kind="tensor"), Input("tokens", kind="pad")]
    with Engine(
        models.path("tokens_dense"), inputs=specs, max_tokens=64, sort_window=sort_window
    ) as ex:
        out = ex.run(batch)
    torch.testing.assert_close(out, module.reference(dense, rows))


@pytest.mark.parametrize("sort_window", [0, 16])
def test_pad_with_gather_input_keeps_rows_aligned(models, sort_window):
    module = models.module("tokens_dense")
    batch, dense, rows = _tokens_dense_batch(6, 40)
    specs = [Input(["a", "b", "c"]), Input("tokens", kind="pad")]
    with Engine(
        models.path("tokens_dense"), inputs=specs, max_tokens=64, sort_window=sort_window
    ) as ex:
        out = ex.run(batch)
    torch.testing.assert_close(out, module.reference(dense, rows))


@pytest.mark.parametrize("sort_window", [0, 16])
def test_two_padded_inputs_share_the_token_budget(models, rng, sort_window):
    """A sentence pair: both inputs padded, each batch under the budget
    counted over both widths (rows x (La + Lb)), rows in submission order."""
    module = models.module("two_texts")
    a, b = ragged(rng, 60, 0, 14), ragged(rng, 60, 1, 6)
    batch = pa.record_batch(
        {
            "a": pa.array(a, pa.list_(pa.int64())),
            "b": pa.array(b, pa.list_(pa.int64())),
        }
    )
    budget = 60
    inputs = [Input("a", kind="pad"), Input("b", kind="pad")]
    with Engine(
        models.path("two_texts"), inputs=inputs, max_tokens=budget, sort_window=sort_window
    ) as ex:
        out, call_rows, call_width = ex.run(batch)
        stats = ex.stats()
    torch.testing.assert_close(out, module.reference(a, b))
    # Each row went through a call of call_rows rows and call_width slots a row.
    cost = call_rows * call_width
    assert bool(((cost <= budget) | (call_rows == 1)).all()), cost.max()
    assert stats["batches"] > 1 and 0 <= stats["padding_ratio"] < 1


def test_input_options_are_checked_by_kind_when_the_engine_is_made(models):
    with pytest.raises(
        ValueError,
        match=r"unknown option 'fill'; expected some of dtype, nulls, max_len, pad_value",
    ):
        Engine(models.path("bag"), inputs=[Input("tokens", kind="pad", fill=1)])
    with pytest.raises(
        ValueError, match=r"unknown option 'max_len'; expected some of dtype, nulls, fill"
    ):
        Engine(models.path("mlp"), inputs=[Input("x", max_len=3)])
    # Values are read by the kind with the batch: a wrong type fails the submission.
    spec = Input("tokens", kind="pad", pad_value="x")
    with (
        Engine(models.path("bag"), inputs=[spec]) as ex,
        pytest.raises(TypeError, match=r"option 'pad_value' must be a bool, int or float, got str"),
    ):
        ex.submit(tokens_batch([[1, 2]]))


def test_engine_options_are_named_and_checked_in_one_place(models):
    path = models.path("mlp")
    with pytest.raises(ValueError, match=r"batch_size must be >= 1, got 0"):
        Engine(path, batch_size=0)
    with pytest.raises(
        ValueError, match=r"sort_window must be >= 0 \(0: no sorting\) or -1 .*, got -2"
    ):
        Engine(path, sort_window=-2)
    with pytest.raises(TypeError, match=r"EngineOptions\.batch_size: cannot take 'many'"):
        Engine(path, batch_size="many")
    with pytest.raises(
        TypeError, match=r"unknown option 'batchsize'; expected some of .*batch_size"
    ):
        torchspark._C.EngineOptions(batchsize=3)
    options = torchspark._C.EngineOptions(batch_size=7, precision="bf16", per_token_names=["x"])
    assert (options.batch_size, options.precision, options.per_token_names) == (7, "bf16", ["x"])
    assert torchspark._C.EngineOptions().max_delay_ms == 2.0


def test_input_tensors_are_what_the_model_receives(rng):
    rows = ragged(rng, 5, 0, 4)
    batch = pa.record_batch(
        {
            "tokens": pa.array(rows, pa.list_(pa.int64())),
            "x": [1.0, 2, 3, 4, 5],
            "y": [0, 1, 0, 1, 0],
        }
    )
    tokens, xy = torchspark.engine.input_tensors(
        batch, [Input("tokens", kind="pad", pad_value=-1), Input(["x", "y"])]
    )
    width = max(len(r) for r in rows)
    assert torch.equal(tokens, torch.tensor([r + [-1] * (width - len(r)) for r in rows]))
    assert torch.equal(xy, torch.tensor([[1.0, 0], [2, 1], [3, 0], [4, 1], [5, 0]]))


def test_pad_max_len_truncates(models, rng):
    module = models.module("bag")
    rows = ragged(rng, 20, 1, 15)
    spec = Input("tokens", kind="pad", max_len=4)
    with Engine(models.path("bag"), inputs=[spec], max_tokens=4096) as ex:
        bag, _, width = ex.run(tokens_batch(rows))
    assert int(width.max()) <= 4
    torch.testing.assert_close(bag, module.reference([r[:4] for r in rows]))


def test_max_tokens_budget_and_sort_window(models):
    module = models.module("bag")
    rng = np.random.default_rng(99)
    # Skewed: most rows short, a few long, in random order.
    rows = ragged(rng, 255, 1, 4) + ragged(rng, 45, 25, 40)
    rows = [rows[i] for i in rng.permutation(len(rows))]
    lengths = np.array([len(r) for r in rows])
    max_tokens = 160
    expected = module.reference(rows)

    runs = {}
    for sort_window in (0, 64, 300):
        with Engine(
            models.path("bag"),
            inputs=[Input("tokens", kind="pad")],
            batch_size=256,
            max_tokens=max_tokens,
            sort_window=sort_window,
        ) as ex:
            bag, call_rows, width = ex.run(tokens_batch(rows))
            stats = ex.stats()
        # Outputs in the original order, equal to the eager per-row result.
        torch.testing.assert_close(bag, expected)
        call_rows, width = call_rows.numpy(), width.numpy()
        # Every model call within the budget (a single row may exceed it).
        assert ((call_rows * width <= max_tokens) | (call_rows == 1)).all()
        assert (width >= lengths).all()  # nothing truncated
        # padded slots / all slots, from what the model saw.
        ratio = 1 - lengths.sum() / width.sum()
        assert stats["padding_ratio"] == pytest.approx(ratio)
        assert 0 < stats["padding_ratio"] < 1
        assert stats["rows"] == len(rows) and stats["batches"] >= 2
        runs[sort_window] = (bag, stats["padding_ratio"])

    torch.testing.assert_close(runs[64][0], runs[0][0])
    torch.testing.assert_close(runs[300][0], runs[0][0])
    assert runs[64][1] < runs[0][1]
    assert runs[300][1] < runs[0][1]


def test_gather_nulls_error_raises_at_submit(models):
    batch = pa.record_batch(
        {"a": pa.array([1.0, None, 3.0]), "b": pa.array([1, 2, 3]), "c": pa.array([4, 5, 6])}
    )
    clean = pa.record_batch({"a": [1.0, 2.0], "b": [1, 2], "c": [3, 4]})
    with Engine(models.path("features3"), inputs=[Input(["a", "b", "c"])]) as ex:
        with pytest.raises(NullValueError, match="a"):
            ex.submit(batch)
        # Nothing was queued for it; the engine keeps serving.
        out = ex.run(clean)
        torch.testing.assert_close(
            out, eager(models.module("features3"), torchspark.gather(clean, ["a", "b", "c"]))
        )
        assert ex.stats()["errors"] == 0


def test_gather_nulls_fill_matches_eager(models):
    batch = pa.record_batch(
        {
            "a": pa.array([1.0, None, 3.0, None]),
            "b": pa.array([None, 2, 3, 4], pa.int32()),
            "c": pa.array([4, 5, None, 7], pa.int64()),
        }
    )
    spec = Input(["a", "b", "c"], nulls="fill", fill=-2.5)
    with Engine(models.path("features3"), inputs=[spec]) as ex:
        out = ex.run(batch)
    filled = torch.tensor([[1.0, -2.5, 4.0], [-2.5, 2.0, 5.0], [3.0, 3.0, -2.5], [-2.5, 4.0, 7.0]])
    torch.testing.assert_close(out, eager(models.module("features3"), filled))


# ---------------------------------------------------------------------------
# Failures


def test_model_error_fails_only_its_batch(models):
    path = models.path("negative_raises")
    good = torch.ones(4, 2)
    bad = -torch.ones(3, 2)
    with Engine(path, batch_size=64) as ex:
        torch.testing.assert_close(ex.run(good), good * 2 + 1)
        with pytest.raises(ModelError) as info:
            ex.run(bad)
        message = str(info.value)
        assert isinstance(info.value, RuntimeError)
        assert path in message and "batch" in message and "request" in message
        assert "negative input" in message
        after = torch.full((5, 2), 3.0)
        torch.testing.assert_close(ex.run(after), after * 2 + 1)
        stats = ex.stats()
    assert stats["errors"] >= 1


def test_model_error_names_every_request_of_the_batch(models):
    with Engine(models.path("negative_raises"), max_delay_ms=200) as ex:
        futures = [ex.submit(torch.ones(2, 2)), ex.submit(-torch.ones(3, 2))]
        ex.flush()
        messages = []
        for future in futures:
            with pytest.raises(ModelError) as info:
                future.result(timeout=TIMEOUT)
            messages.append(str(info.value))
    assert messages[0] == messages[1]
    assert "rows [0, 2)" in messages[0] and "rows [0, 3)" in messages[0]


def test_failed_request_tail_does_not_poison_next_batch(models):
    bad = torch.ones(6, 2)
    bad[0, 0] = -1  # rows 0-3 (the first batch) fail; rows 4-5 are fine
    good = torch.ones(2, 2)
    with Engine(models.path("negative_raises"), batch_size=4, inflight=1, max_delay_ms=500) as ex:
        failing, innocent = ex.submit(bad), ex.submit(good)
        ex.flush()
        with pytest.raises(ModelError, match="negative input"):
            failing.result(timeout=TIMEOUT)
        torch.testing.assert_close(innocent.result(timeout=TIMEOUT), good * 2 + 1)


@pytest.mark.parametrize("name", ["first_row", "sum_rows"])
def test_wrong_output_rows(models, name):
    path = models.path(name)
    with Engine(path) as ex:
        with pytest.raises(ModelError, match="expected 5 rows") as info:
            ex.run(torch.randn(5, FEATURES))
        assert path in str(info.value) and "batch" in str(info.value)
        assert ex.stats()["errors"] == 1


# ---------------------------------------------------------------------------
# Closing


def test_close_drain_finishes_queued_work(models):
    module = models.module("mlp")
    inputs = [torch.randn(n, FEATURES) for n in (3, 8, 1, 5)]
    ex = Engine(models.path("mlp"), max_delay_ms=60_000)
    futures = [ex.submit(x) for x in inputs]
    start = time.monotonic()
    ex.close(drain=True)
    assert time.monotonic() - start < TIMEOUT  # did not wait out max_delay_ms
    assert ex.closed
    for x, future in zip(inputs, futures, strict=True):
        assert future.done()
        torch.testing.assert_close(future.result(timeout=0), eager(module, x))


def _wait_staged(ex: Engine, count: int) -> None:
    deadline = time.monotonic() + TIMEOUT
    while ex.stats()["stage"]["count"] < count:
        assert time.monotonic() < deadline, "batch never staged"
        time.sleep(0.001)


def test_close_without_drain_fails_queued_work(models):
    # One slot: while the slow batch computes, later submissions stay queued.
    ex = Engine(models.path("slow"), batch_size=8192, inflight=1, max_delay_ms=60_000)
    running = ex.submit(torch.randn(8192, 256))
    ex.flush()
    _wait_staged(ex, 1)
    queued = [ex.submit(torch.randn(n, 256)) for n in (2, 3)]
    ex.close(drain=False)
    assert ex.closed
    assert running.result(timeout=TIMEOUT).shape == (8192, 256)
    for future in queued:
        assert future.done()
        with pytest.raises(EngineClosedError, match="closed"):
            future.result(timeout=TIMEOUT)


def test_close_without_drain_fails_request_waiting_for_delay(models):
    ex = Engine(models.path("mlp"), max_delay_ms=60_000)
    future = ex.submit(torch.randn(3, FEATURES))
    time.sleep(0.1)  # the batcher has picked it up and waits for more rows
    ex.close(drain=False)
    assert future.wait(TIMEOUT)
    with pytest.raises(EngineClosedError):
        future.result(timeout=TIMEOUT)


def test_submit_after_close_raises(models):
    ex = Engine(models.path("mlp"))
    ex.close()
    with pytest.raises(RuntimeError, match="closed"):
        ex.submit(torch.randn(2, FEATURES))
    with pytest.raises(RuntimeError, match="closed"):
        ex.run(torch.randn(2, FEATURES))
    ex.close()  # twice is fine
    ex.close(drain=False)
    assert ex.closed


def test_context_manager_closes(models):
    x = torch.randn(4, FEATURES)
    with Engine(models.path("mlp")) as ex:
        assert not ex.closed
        torch.testing.assert_close(ex.run(x), eager(models.module("mlp"), x))
    assert ex.closed
    with pytest.raises(RuntimeError, match="closed"):
        ex.submit(x)

    with pytest.raises(KeyError), Engine(models.path("mlp")) as ex2:
        ex2.run(x)
        raise KeyError("boom")
    assert ex2.closed


def test_unclosed_engines_at_exit_and_when_dropped(models):
    """An engine dropped without close(), and one still open (with queued work
    waiting on a long max_delay_ms) at interpreter exit, neither hang."""
    script = textwrap.dedent(
        f"""
        import gc, torch, torchspark
        path = {models.path("mlp")!r}
        ex = torchspark.Engine(path, max_delay_ms=60_000)
        future = ex.submit(torch.randn(3, {FEATURES}))
        del ex  # the future keeps it alive
        del future
        gc.collect()
        ex2 = torchspark.Engine(path, max_delay_ms=60_000)
        pending = ex2.submit(torch.randn(3, {FEATURES}))
        print("exiting", flush=True)
        """
    )
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "exiting" in proc.stdout


# ---------------------------------------------------------------------------
# Loading


def test_load_not_a_zip(tmp_path):
    path = tmp_path / "garbage.pt"
    path.write_bytes(b"definitely not a model")
    with pytest.raises(ValueError, match=r"garbage\.pt") as info:
        Engine(path)
    assert "zip" in str(info.value)


def test_load_zip_that_is_not_pytorch(tmp_path):
    path = tmp_path / "other.zip"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("hello.txt", "hi")
    with pytest.raises(ValueError, match=r"other\.zip"):
        Engine(path)


def test_load_torch_save_state_dict(tmp_path, models):
    path = tmp_path / "weights.pt"
    torch.save(models.module("mlp").state_dict(), path)
    with pytest.raises(ValueError, match=r"weights\.pt") as info:
        Engine(path)
    assert "export" in str(info.value)


def _torchscript_archive(tmp_path, name: str) -> bytearray:
    class Affine(torch.nn.Module):
        def forward(self, x):
            return x * 2 + 1

    path = tmp_path / name
    torch.jit.save(torch.jit.script(Affine()), path)
    return bytearray(path.read_bytes())


def test_load_refuses_a_record_declaring_more_than_deflate_can_give(tmp_path):
    # The central directory of a few-KB archive declares a 3 GB code record:
    # LibTorch would allocate the 3 GB before finding out (RELIABILITY.md).
    data = _torchscript_archive(tmp_path, "declares.pt")
    entry = data.find(b"PK\x01\x02")
    patched = 0
    while entry >= 0:
        name_size = int.from_bytes(data[entry + 28 : entry + 30], "little")
        if data[entry + 46 : entry + 46 + name_size].endswith(b".py"):
            data[entry + 24 : entry + 28] = (3_000_000_000).to_bytes(4, "little")
            patched += 1
        entry = data.find(b"PK\x01\x02", entry + 4)
    assert patched == 1
    path = tmp_path / "declares.pt"
    path.write_bytes(data)
    with pytest.raises(ValueError, match=r"declares\.pt.*3000000000 bytes uncompressed.*refused"):
        Engine(path)


def _zip_of_zeros(path, name: str, mib: int) -> None:
    """A zip archive of one record, ``mib`` MiB of zeros deflated (about
    1 KB per MiB), written by hand: one 1 MiB block compressed once, with a
    full flush so that it stands alone, repeated."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    block = compressor.compress(bytes(1 << 20)) + compressor.flush(zlib.Z_FULL_FLUSH)
    stream = block * mib + compressor.flush()
    crc = 0
    for _ in range(mib):
        crc = zlib.crc32(bytes(1 << 20), crc)
    size, raw = mib << 20, name.encode()
    sizes = struct.pack("<III", crc, len(stream), size)
    local = struct.pack("<IHHHHH", 0x04034B50, 20, 0, 8, 0, 0) + sizes
    local += struct.pack("<HH", len(raw), 0) + raw
    central = struct.pack("<IHHHHHH", 0x02014B50, 20, 20, 0, 8, 0, 0) + sizes
    central += struct.pack("<HHHHHII", len(raw), 0, 0, 0, 0, 0, 0) + raw
    end = struct.pack(
        "<IHHHHIIH", 0x06054B50, 0, 0, 1, 1, len(central), len(local) + len(stream), 0
    )
    path.write_bytes(local + stream + central + end)


def test_load_refuses_a_decompression_bomb(tmp_path):
    # 300 MiB of zeros in about 300 KB: over the 256 MiB an archive may inflate
    # beyond its own size, refused before LibTorch allocates or inflates it.
    bomb = tmp_path / "bomb.pt"
    _zip_of_zeros(bomb, "archive/data/zeros", 300)
    with zipfile.ZipFile(bomb) as z:  # a valid archive: Python's zipfile reads it
        assert z.getinfo("archive/data/zeros").file_size == 300 << 20
        with z.open("archive/data/zeros") as f:
            assert f.read(1 << 20) == bytes(1 << 20)
    assert bomb.stat().st_size < 400_000
    with pytest.raises(ValueError, match=r"bomb\.pt.*a decompression bomb"):
        Engine(bomb)


MODEL_LOAD_CRASHES = sorted(
    (Path(__file__).parent / "fuzz" / "corpus" / "model_load").glob("crash-*")
)


@pytest.mark.parametrize("crash", MODEL_LOAD_CRASHES, ids=lambda p: p.name)
def test_load_refuses_what_the_model_load_fuzzer_found(crash, tmp_path):
    # Corrupt TorchScript archives model_load_fuzzer found (RELIABILITY.md): a
    # ValueError naming the file, without the gigabytes LibTorch would allocate.
    path = tmp_path / (crash.name + ".pt")
    path.write_bytes(crash.read_bytes())
    with pytest.raises(ValueError, match=re.escape(str(path))):
        Engine(path)


def test_load_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"missing\.pt"):
        Engine(tmp_path / "missing.pt")


def test_load_sha256(models):
    path = models.path("mlp")
    with open(path, "rb") as f:
        digest = hashlib.sha256(f.read()).hexdigest()
    with pytest.raises(ValueError, match="sha256"):
        Engine(path, sha256="0" * 64)
    x = torch.randn(3, FEATURES)
    for checksum in (digest, digest.upper()):
        with Engine(path, sha256=checksum) as ex:
            torch.testing.assert_close(ex.run(x), eager(models.module("mlp"), x))


def test_constructor_argument_errors(models):
    path = models.path("mlp")
    for kwargs in (
        {"batch_size": 0},
        {"inflight": 0},
        {"precision": "fp8"},
        {"max_tokens": 0},
        {"max_delay_ms": -1},
        {"max_tokens": "some"},
        {"sort_window": -2},
    ):
        with pytest.raises(ValueError):
            Engine(path, **kwargs)


# ---------------------------------------------------------------------------
# Reduced precision


@pytest.mark.parametrize("precision, dtype", [("bf16", torch.bfloat16), ("fp16", torch.float16)])
def test_torchscript_autocast_precision(models, precision, dtype):
    module = models.module("mlp")
    x = torch.randn(50, FEATURES)
    with Engine(models.path("mlp"), precision=precision, batch_size=16) as ex:
        out = ex.run(x)
    with torch.no_grad(), torch.autocast("cpu", dtype=dtype):
        autocast = module(x)
    assert out.dtype == autocast.dtype
    torch.testing.assert_close(out, autocast)
    torch.testing.assert_close(out.float(), eager(module, x), rtol=3e-2, atol=3e-2)


def test_torchscript_export_bf16(models, tmp_path):
    module = models.module("mlp")
    path = torchspark.export(
        module, (torch.randn(8, FEATURES),), tmp_path / "bf16.pt", precision="bf16"
    )
    x = torch.randn(30, FEATURES)
    with Engine(path) as ex:
        out = ex.run(x)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, eager(module, x), rtol=3e-2, atol=3e-2)


# ---------------------------------------------------------------------------
# AOTInductor (each export compiles C++: one per session)


@pytest.fixture(scope="session")
def aoti_mlp(models) -> str:
    return models.aoti("mlp", torch.randn(8, FEATURES))


@pytest.mark.slow
def test_aoti_refuses_a_run_time_precision(aoti_mlp):
    with pytest.raises(ValueError, match=r"precision 'bf16' is applied at run time by autocast"):
        Engine(aoti_mlp, precision="bf16")


@pytest.mark.slow
def test_aoti_matches_eager(models, aoti_mlp):
    module = models.module("mlp")
    with Engine(aoti_mlp, batch_size=64) as ex:
        assert ex.model.format == "AOTInductor"
        for n in (1, 7, 300):
            x = torch.randn(n, FEATURES)
            out = ex.run(x)
            assert out.shape == (n, 4)
            torch.testing.assert_close(out, eager(module, x))
        parts = [torch.randn(n, FEATURES) for n in (2, 5, 3)]
        futures = [ex.submit(x) for x in parts]
        ex.flush()
        for x, out in zip(parts, results(futures), strict=True):
            torch.testing.assert_close(out, eager(module, x))


@pytest.mark.slow
def test_aoti_bf16_export_close_to_eager(models, tmp_path):
    module = models.module("mlp")
    path = torchspark.export(
        module,
        (torch.randn(8, FEATURES),),
        tmp_path / "mlp_bf16.pt2",
        format="aoti",
        precision="bf16",
    )
    with Engine(path) as ex:
        for n in (1, 7, 300):
            x = torch.randn(n, FEATURES)
            out = ex.run(x)
            assert out.dtype == torch.float32
            torch.testing.assert_close(out, eager(module, x), rtol=3e-2, atol=3e-2)


@pytest.mark.slow
def test_aoti_dict_inputs_and_outputs_keep_their_names(models, tmp_path):
    module = models.module("dict_out")
    x, y = torch.randn(8, 4), torch.randn(8, 4)
    path = torchspark.export(module, (x, y), tmp_path / "dict.pt2", format="aoti")
    with Engine(path) as ex:
        assert ex.model.input_names == ["x", "y"]
        for n in (1, 5):
            x, y = torch.randn(n, 4), torch.randn(n, 4)
            out = ex.run({"y": y, "x": x})  # by name, in another order
            expected = eager(module, x, y)
            assert isinstance(out, dict) and list(out) == list(expected)
            for key in expected:
                torch.testing.assert_close(out[key], expected[key])


# ---------------------------------------------------------------------------
# Memory


def test_inputs_released_after_completion(models):
    with Engine(models.path("mlp")) as ex:
        x = torch.randn(6, FEATURES)
        ref = weakref.ref(x)
        ex.run(x)
        del x
        deadline = time.monotonic() + TIMEOUT
        while ref() is not None:  # finished requests are dropped on a later call
            assert time.monotonic() < deadline, "the engine kept the input tensor"
            ex.stats()
            gc.collect()
            time.sleep(0.01)


def test_many_submissions_do_not_grow_objects(models):
    x = torch.randn(3, FEATURES)
    with Engine(models.path("mlp"), max_delay_ms=0) as ex:

        def burst(n: int) -> None:
            for _ in range(n):
                ex.run(x)
            ex.stats()

        burst(50)
        gc.collect()
        before = len(gc.get_objects())
        burst(200)
        gc.collect()
        after = len(gc.get_objects())
        assert ex.stats()["requests"] == 250
    assert after - before < 100


# ---------------------------------------------------------------------------
# Regressions from the concurrency review


def test_inputs_that_require_grad_leave_no_history(models):
    module = models.module("mlp")
    layer = torch.nn.Linear(FEATURES, FEATURES)
    with Engine(models.path("mlp"), batch_size=8, max_delay_ms=50) as ex:
        x = layer(torch.randn(5, FEATURES))  # requires grad, has a graph
        assert x.requires_grad
        futures = [ex.submit(x), ex.submit(torch.randn(2, FEATURES))]  # staged by copy
        ex.flush()
        out = futures[0].result(timeout=TIMEOUT)
        futures[1].result(timeout=TIMEOUT)
        assert not out.requires_grad and out.grad_fn is None
        with torch.no_grad():
            torch.testing.assert_close(out, module(x))
        ref = weakref.ref(x)
        del x, futures
        deadline = time.monotonic() + TIMEOUT
        while ref() is not None:
            assert time.monotonic() < deadline, "the engine kept the input's graph alive"
            ex.stats()
            gc.collect()
            time.sleep(0.01)


def test_sorted_gather_inputs_accept_one_row_batches(models):
    module = models.module("tokens_dense")
    specs = [Input(["a", "b", "c"]), Input("tokens", kind="pad")]
    with Engine(models.path("tokens_dense"), inputs=specs, sort_window=4) as ex:
        for seed, n in ((1, 3), (2, 1), (3, 0), (4, 5)):
            batch, dense, rows = _tokens_dense_batch(seed, n)
            out = ex.run(batch)
            assert out.shape[0] == n
            if n:
                torch.testing.assert_close(out, module.reference(dense, rows))


def test_wait_without_a_finite_timeout(models):
    with Engine(models.path("mlp")) as ex:
        future = ex.submit(torch.randn(3, FEATURES))
        ex.flush()
        assert future.wait(float("inf"))
        assert future.wait(1e300)
        assert future.result(timeout=float("inf")).shape[0] == 3


def test_close_from_two_threads_at_once(models):
    ex = Engine(models.path("mlp"), max_delay_ms=50)
    futures = [ex.submit(torch.randn(4, FEATURES)) for _ in range(20)]
    threads = [threading.Thread(target=ex.close, args=(drain,)) for drain in (True, False)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(TIMEOUT)
        assert not t.is_alive()
    assert ex.closed
    for future in futures:  # each one either ran or was cancelled, none hangs
        assert future.wait(TIMEOUT)


# ---------------------------------------------------------------------------
# Threads


@pytest.fixture
def restore_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize(
    ("pool", "workers", "cores", "expected"),
    [(2, 1, 2, 2), (2, 2, 2, 1), (8, 3, 8, 2), (1, 1, 16, 1), (4, 8, 2, 1)],
)
def test_thread_rule_shrinks_the_pool_never_grows_it(
    restore_threads, pool, workers, cores, expected
):
    from torchspark.engine import size_intra_op_threads

    torch.set_num_threads(pool)
    assert size_intra_op_threads(workers, cores=cores) == expected
    assert torch.get_num_threads() == expected


def test_engine_sizes_intra_op_threads(models, restore_threads):
    from torchspark.engine import usable_cores

    torch.set_num_threads(usable_cores())
    with Engine(models.path("mlp"), threads=usable_cores() + 1):
        assert torch.get_num_threads() == 1
    with Engine(models.path("mlp"), intra_op_threads=1):
        assert torch.get_num_threads() == 1
    with pytest.raises(ValueError, match="intra_op_threads"):
        Engine(models.path("mlp"), intra_op_threads=0)


# ---------------------------------------------------------------------------
# Inline runs (cheap calls on the submitting thread)


def test_cheap_one_batch_submissions_run_inline(models):
    # A generous bound: the test must not depend on how loaded the machine is.
    with Engine(models.path("negative_raises"), batch_size=4, inline_below_ms=1e3) as ex:
        xs = [torch.rand(4, 2) + i for i in range(50)]
        # The first call is measured on a worker; later ones run inline when they
        # find the engine idle (a worker may still be retiring the previous batch).
        for x in xs[:20]:
            torch.testing.assert_close(ex.run(x), x * 2 + 1)
        assert ex.stats()["inline_batches"] >= 1
        for x, out in zip(xs, ex.map(xs), strict=True):
            torch.testing.assert_close(out, x * 2 + 1)
        # An error inline fails that call only, with the usual message (a call
        # may find a worker still retiring the previous batch: then it is not inline).
        failed = 0
        while failed < 20:
            before = ex.stats()["inline_batches"]
            message = r"batch \d+ \(4 rows: request \d+ rows \[0, 4\)\)"
            with pytest.raises(ModelError, match=message):
                ex.run(-torch.ones(4, 2))
            failed += 1
            if ex.stats()["inline_batches"] == before + 1:
                break
        assert ex.stats()["inline_batches"] == before + 1
        torch.testing.assert_close(ex.run(torch.ones(4, 2)), torch.full((4, 2), 3.0))
        # Other shapes still batch as before: coalesced, not inline.
        futures = [ex.submit(torch.ones(1, 2)) for _ in range(8)]
        ex.flush()
        assert all(torch.equal(f.result(), torch.full((1, 2), 3.0)) for f in futures)
        assert ex.stats()["errors"] == failed


def test_an_output_that_is_the_input_comes_back_as_eager_pytorch_returns_it(models):
    """Inline and through the engine's threads (a zero-copy batch) alike."""
    for bound in (1e6, 0):
        with Engine(models.path("identity"), batch_size=8, inline_below_ms=bound) as ex:
            for _ in range(5):
                x = torch.randn(8, 4)
                same, first = ex.run(x)
                assert same.data_ptr() == x.data_ptr() and torch.equal(first, x[:, 0])
            assert (ex.stats()["inline_batches"] > 0) == (bound > 0)


def test_dropped_requests_end_on_the_callers_thread(models):
    """Outputs that share a numpy-backed input keep the array alive; releasing
    it takes the GIL, so a request whose Future was dropped must not end on an
    engine thread (it would wait for the GIL held by a caller waiting on the
    engine). Every array is released on this thread."""
    released = []
    with Engine(models.path("identity"), batch_size=8, inline_below_ms=0) as ex:
        for i in range(200):
            base = np.full((8, 4), float(i), dtype=np.float32)
            weakref.finalize(base, lambda: released.append(threading.get_ident()))
            ex.submit(torch.from_numpy(base))  # the Future is dropped at once
            del base
            ex.stats()  # empties the garbage while the engine works
    gc.collect()
    assert len(released) == 200
    assert set(released) == {threading.get_ident()}


def test_map_runs_on_the_engines_threads_and_keeps_coalescing(models):
    """map never runs inline (it overlaps the caller's next item with the
    model instead): items smaller than a batch share model calls, in order."""
    with Engine(models.path("rows"), batch_size=64, max_delay_ms=200, inline_below_ms=1e3) as ex:
        ex.run(torch.zeros(4, 1, dtype=torch.long))  # measured: run() may inline from here
        items = [torch.full((4, 1), i) for i in range(128)]
        outs = list(ex.map(items))
        for i, (doubled, _) in enumerate(outs):
            assert torch.equal(doubled, torch.full((4, 1), 2 * i + 1))
        assert ex.stats()["inline_batches"] <= 1  # the run() above at most
        assert max(int(rows.max()) for _, rows in outs) > 4  # several items per call


def test_inline_off_when_the_bound_is_zero(models):
    with Engine(models.path("negative_raises"), batch_size=4, inline_below_ms=0) as ex:
        for out in ex.map(torch.ones(4, 2) for _ in range(20)):
            torch.testing.assert_close(out, torch.full((4, 2), 3.0))
        assert ex.stats()["inline_batches"] == 0
