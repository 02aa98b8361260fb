"""The shared engine process (``share="executor"``) on its own and in Spark.

On its own (this process as the task): predictions against eager PyTorch,
concurrent first connections start one engine, errors come back with the
in-process engine's type and text, the application's secret and uid are
checked, applications never share an engine, a client that leaves mid-batch
does not stall it, a killed engine fails its requests clearly and the next
connection starts a fresh one over its stale socket, idleness ends it.

In Spark: ``spark_shared_job.py`` on ``local-cluster[2,2,2048]``, in the
background (see background_job.py).
"""

from __future__ import annotations

import contextlib
import doctest
import json
import os
import pickle
import re
import signal
import threading
import time
import warnings

import background_job
import numpy as np
import pyarrow as pa
import pytest
import torch

import torchspark
from torchspark.distribute import ModelRef
from torchspark.spark.shared import attach, protocol, rendezvous, server
from torchspark.spark.shared.attach import executor_engine
from torchspark.spark.shared.client import open_engine
from torchspark.spark.shared.mode import Sharing

JOB_TEST = "test_one_engine_per_executor_in_a_local_cluster"
JOB_TIMEOUT = 480.0
CPU = torch.device("cpu")
SPECS = [torchspark.Input("x")]


class Raises(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if bool((x[:, 0] > 1e5).any()):
            raise ValueError("x0 above the limit")
        return torch.tanh(x) * 2


@pytest.fixture(scope="module", autouse=True)
def shared_job(request, tmp_path_factory):
    """spark_shared_job.py, started in the background when the module starts
    (if its test is selected): its JVMs start while the tests above run."""
    yield from background_job.start(request, tmp_path_factory, "spark_shared_job.py", JOB_TEST)


@pytest.fixture(scope="module")
def model_path(tmp_path_factory) -> str:
    path = str(tmp_path_factory.mktemp("shared_model") / "raises.pt")
    torch.jit.save(torch.jit.script(Raises()), path)
    return path


@pytest.fixture
def shared_dir(tmp_path, monkeypatch):
    """A private base directory; every engine started in it is ended after the test."""
    monkeypatch.setenv("TORCHSPARK_SHARED_DIR", str(tmp_path))
    monkeypatch.setenv("TORCHSPARK_SHARED_IDLE_S", "30")
    yield tmp_path
    attach._connections.clear()
    for pid in engine_pids(tmp_path):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def engine_pids(base) -> list[int]:
    pids = []
    for root, _, files in os.walk(base):
        if "loads.jsonl" in files:
            with open(os.path.join(root, "loads.jsonl")) as f:
                pids += [json.loads(line)["pid"] for line in f]
    return pids


def app_dir(base, application: str) -> str:
    return os.path.join(base, f"torchspark-{os.getuid()}", application)


def features(rows: int, start: int = 0) -> pa.RecordBatch:
    x = (np.arange(start * 4, (start + rows) * 4, dtype=np.float32) % 7 - 3).reshape(rows, 4)
    offsets = pa.array(np.arange(0, rows * 4 + 1, 4, dtype=np.int32))
    column = pa.ListArray.from_arrays(offsets, pa.array(x.ravel()))
    return pa.record_batch([pa.array(np.arange(start, start + rows)), column], names=["id", "x"])


def eager(batch: pa.RecordBatch) -> torch.Tensor:
    x = torch.tensor(batch.column("x").to_pylist(), dtype=torch.float32)
    return Raises()(x)


def connect(model_path: str, application: str = "app-test", **options):
    options = {"batch_size": 64, **options}
    return executor_engine(
        ModelRef("path", model_path), CPU, SPECS, options, Sharing("executor", application)
    )


def test_predictions_match_eager_and_batches_mix_connections(shared_dir, model_path):
    engine = connect(model_path, max_delay_ms=30.0)
    batches = [features(10, start) for start in range(0, 400, 10)]
    got = torch.cat(list(engine.map(batches)))
    assert torch.equal(got, torch.cat([eager(b) for b in batches]))
    # Two connections, each with one 10-row batch at a time: the engine's
    # calls hold more rows than one connection ever has in flight.
    place_dir = app_dir(shared_dir, "app-test")
    before = engine.stats()["batches"]
    with engine.sibling(max_delay_ms=0.0) as alone:  # its own queue, the same loaded model
        assert torch.equal(alone.run(features(3)), eager(features(3)))
    second = open_engine(*_place_and_config(place_dir), "second")

    def feed(client, offset):
        for start in range(offset, offset + 200, 10):
            assert torch.equal(client.run(features(10, start)), eager(features(10, start)))

    threads = [threading.Thread(target=feed, args=(c, o)) for c, o in ((engine, 0), (second, 1000))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    stats = engine.stats()
    assert stats["rows"] >= 400 + 400
    calls = stats["batches"] - before
    assert calls < 40, f"{calls} model calls for 40 requests of 10 rows: no batching across"
    assert len(engine_pids(shared_dir)) == 1
    second.close()


def _place_and_config(directory: str):
    """The one engine's place in ``directory`` (and no config: it runs already)."""
    key = next(f[: -len(".sock")] for f in os.listdir(directory) if f.endswith(".sock"))
    return rendezvous.Place(directory, key), b""


def test_on_the_cpu_the_engine_runs_the_executors_task_slots_as_its_threads(shared_dir, model_path):
    """By default one worker thread per task slot (spark.executor.cores //
    spark.task.cpus), each with spark.task.cpus intra-op threads, as the
    per-task engines would; one of the two given, the other divides the
    cores. The engine process says which (the task records report it)."""
    ref, specs = ModelRef("path", model_path), SPECS
    layouts = {
        (): (2, 2),  # 4 cores, 2 per task: 2 slots of 2
        (("threads", 1),): (1, 4),
        (("intra_op_threads", 1),): (4, 1),
    }
    for given, expected in layouts.items():
        options = {"batch_size": 64, **dict(given)}
        sharing = Sharing("executor", "app-layout", cores=4, task_cpus=2)
        engine = executor_engine(ref, CPU, specs, options, sharing)
        assert (engine.threads, engine.intra_op_threads) == expected, given
        batch = features(100)
        assert torch.equal(engine.run(batch), eager(batch))
    default = executor_engine(ref, CPU, specs, {"batch_size": 64}, Sharing("executor", "app-one"))
    assert (default.threads, default.intra_op_threads) == (torchspark.engine.usable_cores(), 1)
    failures, tried = doctest.testmod(server)  # cpu_layout's examples
    assert tried >= 2 and failures == 0


def test_concurrent_first_connections_start_one_engine(shared_dir, model_path):
    directory = rendezvous.application_directory("app-race")
    place = rendezvous.Place(directory, "race")
    config = pickle.dumps(
        {
            "directory": directory,
            "key": "race",
            "path": model_path,
            "device": "cpu",
            "specs": SPECS,
            "options": {"batch_size": 64},
            "cores": 1,
            "executor": "test",
            "jvm": os.getpid(),
            "label": "model 'raises.pt'",
            "idle_s": 30.0,
        }
    )
    clients = []

    def start():
        clients.append(open_engine(place, config, "race"))

    threads = [threading.Thread(target=start) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(clients) == 4
    assert len({c.pid for c in clients}) == 1
    assert len(engine_pids(shared_dir)) == 1
    for c in clients:
        assert torch.equal(c.run(features(5)), eager(features(5)))
        c.close()


def test_errors_come_back_with_the_in_process_type_and_text(shared_dir, model_path):
    bad = features(20)
    x = bad.column("x").to_pylist()
    x[7][0] = 1e6
    column = pa.array(x, type=pa.list_(pa.float32()))
    bad = pa.record_batch([bad.column("id"), column], names=["id", "x"])
    engine = connect(model_path, max_delay_ms=0.0)
    local = torchspark.Engine(model_path, device="cpu", inputs=SPECS, batch_size=64)
    with local, pytest.raises(torchspark.ModelError) as expected:
        local.submit(bad).result()  # through the batcher, as worker.score submits
    with pytest.raises(torchspark.ModelError) as got:
        engine.run(bad)
    ids = re.compile(r"(request|batch) \d+")
    assert ids.sub(r"\1 N", str(got.value)) == ids.sub(r"\1 N", str(expected.value))
    assert "x0 above the limit" in str(got.value)
    # Each error says which of its batch's requests it is (worker._locate names its rows).
    for e in (got.value, expected.value):
        assert f"request {e.torchspark_request} rows [0, 20)" in str(e)
    inputs = [features(5), bad, features(5, 5)]
    results = list(engine.map(inputs, return_exceptions=True))
    assert isinstance(results[1], torchspark.ModelError)
    # A batch queued with the bad one may share its model call (the engine
    # batches whatever is waiting, as in-process): then it fails with the same
    # error; else it is scored. Either way map goes on after the error.
    for batch, result in zip([inputs[0], inputs[2]], [results[0], results[2]], strict=True):
        if isinstance(result, torchspark.ModelError):
            assert "x0 above the limit" in str(result)
        else:
            assert torch.equal(result, eager(batch))
    assert torch.equal(engine.run(features(5, 5)), eager(features(5, 5)))


def with_bad_rows(rows: int, bad: list[int]) -> pa.Table:
    good = features(rows)
    x = good.column("x").to_pylist()
    for row in bad:
        x[row][0] = 1e6
    return pa.table([good.column("id"), pa.array(x, type=pa.list_(pa.float32()))], ["id", "x"])


def scored(engine, table: pa.Table, policy) -> tuple[list[pa.RecordBatch], dict]:
    T = pytest.importorskip("pyspark.sql.types")
    from torchspark.spark import worker

    stats = worker.new_stats()
    batches = table.to_batches(max_chunksize=25)
    types = [T.ArrayType(T.FloatType())]
    outs = worker.score(engine, batches, ["id"], "p", "test", "id", stats, None, policy, types)
    return list(outs), stats


def test_a_task_scores_the_same_on_the_shared_engine(shared_dir, model_path):
    """worker.score (what each task runs) on the shared engine and on an
    in-process one: same outputs, same bad rows (isolated on a sibling), same
    error text when the policy raises."""
    from torchspark.spark.bad_rows import bad_row_policy

    table = with_bad_rows(200, [3, 77, 78, 150])
    shared = connect(model_path, max_delay_ms=0.0)
    local = torchspark.Engine(model_path, device="cpu", inputs=SPECS, batch_size=64)
    with local:
        for policy in (bad_row_policy("null"), bad_row_policy("quarantine")):
            (got, got_stats), (want, want_stats) = (
                scored(e, table, policy) for e in (shared, local)
            )
            assert pa.Table.from_batches(got).equals(pa.Table.from_batches(want))
            assert got_stats["bad_rows"] == want_stats["bad_rows"] == 4
            assert got_stats["bad_row_reasons"] == want_stats["bad_row_reasons"]
            assert got_stats["rows"] == want_stats["rows"] == 200
        errors = []
        for e in (shared, local):
            with pytest.raises(torchspark.ModelError) as info:
                scored(e, table, bad_row_policy("raise"))
            errors.append(re.sub(r"(request|batch) \d+", r"\1 N", str(info.value)))
    same_batching = re.compile(r"batch N \(\d+ rows: .*?\) failed")  # coalesced differently
    assert same_batching.sub("", errors[0]) == same_batching.sub("", errors[1])
    assert "x0 above the limit" in errors[0] and "[at test, Arrow batch N (25 rows)" in errors[0]
    assert errors[0].endswith("(first: id=0)]")  # the first bad Arrow batch, rows of its own
    good = pa.Table.from_batches(scored(shared, table.slice(4, 70), bad_row_policy("raise"))[0])
    expected = eager(table.slice(4, 70).combine_chunks().to_batches()[0])
    assert torch.equal(torch.tensor(good.column("p").to_pylist()), expected)


def test_text_inputs_are_tokenized_in_the_engine_process(shared_dir, tmp_path):
    """A shipped tokenizer (a ModelRef, as on executors) is fetched by the task
    and tokenized in the engine: rows equal the tokenizer + module row by row."""
    pytest.importorskip("tokenizers")
    from test_text import Encoder, reference, sentences, train_tokenizer

    tokenizer = train_tokenizer(str(tmp_path / "tokenizer.json"))
    path = str(tmp_path / "encoder.pt")
    torch.jit.script(Encoder().eval()).save(path)
    spec = torchspark.Input("text", kind="text", tokenizer=ModelRef("path", tokenizer), max_len=24)
    texts = sentences(np.random.default_rng(5), 300)
    batch = pa.record_batch({"id": np.arange(len(texts)), "text": pa.array(texts)})
    engine = executor_engine(
        ModelRef("path", path), CPU, [spec], {"batch_size": 128}, Sharing("executor", "app-text")
    )
    got = torch.cat(list(engine.map([batch.slice(i, 50) for i in range(0, 300, 50)])))
    expected = reference(tokenizer, texts, 24, Encoder().eval())
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
    assert engine.padded and engine.stats()["rows_truncated"] > 0


def test_an_error_names_the_rows_of_its_own_request():
    """A batch mixing requests (other Arrow batches, other tasks' on a shared
    engine) fails them all with one text; each task's error names its own rows."""
    from torchspark.spark.worker import _locate

    batch = pa.record_batch([pa.array(range(100, 130))], names=["id"])
    text = "batch 3 (55 rows: request 7 rows [0, 25), request 9 rows [5, 30)) failed: boom"
    for request, expected in ((9, "rows [5, 30) (first: id=105)"), (None, "rows [0, 25)")):
        error = torchspark.ModelError(text)
        if request is not None:
            error.torchspark_request = request
        _locate(error, batch, 2, "stage 1 partition 4 attempt 0", "id")
        assert f"[at stage 1 partition 4 attempt 0, Arrow batch 2 (30 rows), {expected}" in str(
            error
        )


def test_a_wrong_secret_or_another_application_is_refused(shared_dir, model_path):
    engine = connect(model_path)
    directory = app_dir(shared_dir, "app-test")
    place, _ = _place_and_config(directory)
    sock = rendezvous.connect(place)
    protocol.send(sock, protocol.HELLO, meta={"secret": "00" * 32, "sibling": None})
    answer = protocol.receive(sock)
    assert answer.kind == protocol.REFUSED and "wrong application secret" in answer.meta["error"]
    assert protocol.receive(sock) is None  # closed
    sock.close()
    sock = rendezvous.connect(place)
    protocol.send(sock, protocol.STATS, 1)
    answer = protocol.receive(sock)
    assert (
        answer.kind == protocol.REFUSED
        and "expected HELLO first, got STATS" in (answer.meta["error"])
    )
    sock.close()
    # Another application: its own directory, secret and engine.
    other = connect(model_path, application="app-other")
    assert other.pid != engine.pid
    assert rendezvous.application_secret(app_dir(shared_dir, "app-other")) != (
        rendezvous.application_secret(directory)
    )
    mode = os.stat(directory).st_mode & 0o777
    assert mode == 0o700 and os.stat(place.socket_path).st_mode & 0o077 == 0
    assert os.stat(os.path.join(directory, "secret")).st_mode & 0o777 == 0o600
    assert torch.equal(engine.run(features(3)), eager(features(3)))  # unaffected


def test_a_lying_message_drops_only_its_own_connection(shared_dir, model_path):
    engine = connect(model_path)
    directory = app_dir(shared_dir, "app-test")
    place, _ = _place_and_config(directory)
    secret = rendezvous.application_secret(directory)
    for payload, length in ((b"not arrow at all" * 8, 128), (b"\xff" * 64, 64)):
        sock = rendezvous.connect(place)
        protocol.send(sock, protocol.HELLO, meta={"secret": secret.hex(), "sibling": None})
        assert protocol.receive(sock).kind == protocol.WELCOME
        fd = os.memfd_create("lie")
        os.write(fd, payload)
        protocol.send(sock, protocol.SUBMIT, 1, fd=fd, length=length)
        os.close(fd)
        sock.settimeout(30)
        assert protocol.receive(sock) is None  # dropped, not answered, not hung
        sock.close()
    with open(place.path(".log")) as f:
        log = f.read()
    assert "connection dropped: ProtocolError: request 1: not a valid Arrow IPC stream" in log
    assert torch.equal(engine.run(features(9)), eager(features(9)))  # the others go on


def test_a_client_that_leaves_mid_batch_does_not_stall_the_engine(shared_dir, model_path):
    engine = connect(model_path)
    leaver = open_engine(*_place_and_config(app_dir(shared_dir, "app-test")), "leaver")
    for start in range(0, 2000, 100):
        leaver.submit(features(100, start))
    leaver._sock.close()  # gone with its requests in flight, answers unread
    for start in range(0, 500, 50):
        assert torch.equal(engine.run(features(50, start)), eager(features(50, start)))
    assert not engine.closed


def test_a_killed_engine_fails_in_flight_requests_and_the_next_starts_fresh(shared_dir, model_path):
    engine = connect(model_path, max_delay_ms=200.0, batch_size=100000)
    pending = [engine.submit(features(100, s)) for s in range(0, 1000, 100)]
    os.kill(engine.pid, signal.SIGKILL)
    with pytest.raises(torchspark.EngineClosedError, match=r"went away with requests in flight"):
        for answer in pending:
            answer.result(timeout=30)
    assert engine.closed
    directory = app_dir(shared_dir, "app-test")
    assert any(f.endswith(".sock") for f in os.listdir(directory))  # left by SIGKILL
    fresh = connect(model_path, max_delay_ms=200.0, batch_size=100000)
    assert fresh.pid != engine.pid
    assert torch.equal(fresh.run(features(7)), eager(features(7)))
    assert len(engine_pids(shared_dir)) == 2


def test_an_idle_engine_exits_and_removes_its_socket(shared_dir, model_path, monkeypatch):
    monkeypatch.setenv("TORCHSPARK_SHARED_IDLE_S", "1")
    engine = connect(model_path, application="app-idle")
    assert torch.equal(engine.run(features(4)), eager(features(4)))
    engine.close()
    directory = app_dir(shared_dir, "app-idle")
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and any(f.endswith(".sock") for f in os.listdir(directory)):
        time.sleep(0.2)
    assert not [f for f in os.listdir(directory) if f.endswith(".sock")]
    with pytest.raises(ProcessLookupError):
        for _ in range(50):
            os.kill(engine.pid, 0)
            time.sleep(0.1)


def test_an_engine_whose_starter_went_away_serves_the_next_task(
    shared_dir, model_path, monkeypatch
):
    """The task that starts an engine may be gone (cancelled, killed) before
    the engine says it is ready: the engine must go on serving (found in the
    spark_fault_job run, where it died of a broken pipe instead)."""
    import subprocess
    import sys

    started = {}

    def capture(place, config, label):
        started.update(place=place, config=config)
        raise RuntimeError("captured")

    monkeypatch.setattr(attach, "open_engine", capture)
    with pytest.raises(RuntimeError, match="captured"):
        connect(model_path, application="app-orphan")
    monkeypatch.undo()
    monkeypatch.setenv("TORCHSPARK_SHARED_DIR", str(shared_dir))
    monkeypatch.setenv("TORCHSPARK_SHARED_IDLE_S", "30")
    attach._connections.clear()
    place = started["place"]
    with open(place.path(".log"), "ab") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "torchspark.spark.shared.server"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=log,
        )
    process.stdout.close()  # the starter is gone before the engine is ready
    process.stdin.write(started["config"])
    process.stdin.close()
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and "serving" not in rendezvous.log_tail(place):
        assert process.poll() is None, rendezvous.log_tail(place)
        time.sleep(0.1)
    engine = connect(model_path, application="app-orphan")
    assert engine.pid == process.pid, rendezvous.log_tail(place)
    assert torch.equal(engine.run(features(6)), eager(features(6)))
    assert "the task that started this engine is gone" in rendezvous.log_tail(place)


def test_an_engine_that_cannot_load_its_model_fails_with_its_log(shared_dir, tmp_path):
    path = tmp_path / "not_a_model.pt"
    path.write_bytes(b"these bytes are no model")
    with pytest.raises(RuntimeError) as info:
        connect(str(path), application="app-broken")
    text = str(info.value)
    assert "shared engine for model 'not_a_model.pt' on cpu: the engine process exited" in text
    assert "not_a_model.pt" in text.split("the end of its log", 1)[1]  # the load's own error
    directory = app_dir(shared_dir, "app-broken")
    assert not [f for f in os.listdir(directory) if f.endswith(".sock")]


def test_the_simulated_device_runs_one_call_at_a_time(test_ops, tmp_path):
    """The test double behind benchmarks/shared_bench.py: calls holding the same
    lock run one at a time, and each returns
    the first value of its rows."""
    lock = str(tmp_path / "device.lock")
    spans = []

    def call(i: int) -> None:
        x = torch.arange(12.0).reshape(4, 3) + i
        start = time.monotonic()
        out = torch.ops.torchspark_test.simulated_device(x, 30.0, 1000.0, lock)  # 34 ms
        spans.append((start, time.monotonic()))
        assert torch.equal(out, x[:, :1])

    threads = [threading.Thread(target=call, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    # One at a time: the three 34 ms calls span at least 102 ms (together: ~34).
    first, last = min(start for start, _ in spans), max(end for _, end in spans)
    assert last - first >= 0.102, spans
    with pytest.raises(ValueError, match="fixed_ms and row_us must be >= 0"):
        torch.ops.torchspark_test.simulated_device(torch.ones(2, 2), -1.0, 0.0, lock)


def test_share_is_checked_and_warns_about_a_copy_per_task_on_a_gpu():
    from torchspark.spark.shared.mode import sharing

    class Conf(dict):
        """A session's ``spark.conf`` (RuntimeConfig.get(key, default))."""

        def get(self, key, default=None):
            return super().get(key, default)

    class Session:
        """What sharing reads of a SparkSession: its conf only (no
        SparkContext, as under Spark Connect)."""

        def __init__(self, conf):
            self.conf = Conf({"spark.app.id": "app-x", **conf})

    with pytest.raises(ValueError, match=r"share must be one of \['executor', 'task', 'auto'\]"):
        sharing(Session({}), "worker")
    fractional = Session({"spark.task.resource.gpu.amount": "0.25", "spark.executor.cores": "4"})
    with pytest.warns(UserWarning, match="4 tasks per GPU"):
        result = sharing(fractional, "task")
    assert result == Sharing("task", "app-x", 4, 1)
    # The executors' cores by Spark's defaults where unset (the engine's
    # worker threads on the CPU): N of local[N], 1 on YARN, unknown on a
    # standalone cluster (the engine then counts the cores it may use).
    for master, cores in (("local[3]", 3), ("yarn", 1), ("spark://host:7077", None)):
        assert sharing(Session({"spark.master": master}), "executor").cores == cores, master
    assert sharing(fractional, "auto").shared(torch.device("cuda", 0))
    assert not sharing(fractional, "auto").shared(CPU)
    # A whole GPU per task: one task per device, nothing to share.
    one_each = Session({"spark.task.resource.gpu.amount": "1", "spark.task.cpus": "2"})
    whole = sharing(one_each, "auto")
    assert whole.whole_gpu and whole.task_cpus == 2
    assert not whole.shared(torch.device("cuda", 0))
    assert sharing(Session({}), "auto").shared(torch.device("cuda", 0))  # local mode: no amount
    # 0.6 of a GPU: Spark fits floor(1 / 0.6) = 1 task on each, so no warning and no sharing.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        most = sharing(Session({"spark.task.resource.gpu.amount": "0.6"}), "task")
    assert most.whole_gpu
    assert not sharing(Session({"spark.task.resource.gpu.amount": "0.6"}), "auto").shared(
        torch.device("cuda", 0)
    )
    assert sharing(Session({}), "executor").shared(CPU)


@pytest.mark.spark
def test_predict_and_torch_udf_share_the_engine_in_local_mode(spark, model_path, tmp_path):
    """local[2,4]: the driver's JVM is the executor; both tasks slots feed one
    engine, and predict, arrow_predictor and torch_udf give eager's values."""
    df = spark.range(0, 3000, 1, 6).selectExpr(
        "id", "transform(sequence(0, 3), i -> cast(pmod(id * 4 + i, 7) - 3 as float)) as x"
    )
    source = df.toArrow().sort_by("id")
    expected = Raises()(torch.tensor(source.column("x").to_pylist())).numpy()
    scored = torchspark.predict(df, model_path, inputs="x", keep=["id"], share="executor")
    table = scored.toArrow().sort_by("id")
    assert table.column("id").to_pylist() == source.column("id").to_pylist()
    assert np.array_equal(np.array(table.column("prediction").to_pylist()), expected)
    records = torchspark.last_report().task_records
    assert {r["share"] for r in records} == {"executor"}
    assert len({r["engine_pid"] for r in records}) == 1
    udf = torchspark.torch_udf(model_path, return_type="array<float>", share="executor")
    with_column = df.withColumn("p", udf("x")).toArrow().sort_by("id")
    assert np.array_equal(np.array(with_column.column("p").to_pylist()), expected)
    with pytest.raises(ValueError, match="share must be one of"):
        torchspark.predict(df, model_path, inputs="x", share="executors")


@pytest.mark.spark
def test_one_engine_per_executor_in_a_local_cluster(shared_job):
    pytest.importorskip("pyspark")
    r = background_job.result(shared_job, JOB_TIMEOUT)
    assert r["executors"] == 2
    main = r["main"]
    assert main["count"] == main["rows"] == main["distinct"]
    assert main["missing"] == main["extra"] == 0
    assert main["ids_equal"] and 0 <= main["max_abs_diff"] <= 1e-5
    # One model load per executor for the whole job, and every task used it.
    loads = r["loads"]
    assert sorted(load["executor"] for load in loads) == ["0", "1"], loads
    assert set(main["engine_pids"]) == {load["pid"] for load in loads}
    assert main["shares"] == ["executor"]
    assert main["tasks"] == r["partitions"]
    # Batches mixed rows of different tasks: rows of one model call came from
    # several partitions (the model's second output is its batch's tag range).
    assert main["mixed_rows"] > 0
    # A cancelled job: the engines survive and serve the next job, which is exact.
    c = r["cancelled"]
    assert c.get("error") or c.get("finished"), c
    assert c["count"] == c["distinct"] == main["rows"] and c["missing"] == c["extra"] == 0, c
    assert c["ids_equal"] and 0 <= c["max_abs_diff"] <= 1e-5, c
    assert c["engine_pids"] == main["engine_pids"] and c["loads"] == len(loads), c
    # Killed engine / killed Python worker: retried, every id once, same predictions.
    for case in ("engine_killed", "worker_killed"):
        c = r[case]
        assert c["count"] == c["distinct"] == main["rows"], (case, c)
        assert c["missing"] == c["extra"] == 0, (case, c)
        assert c["ids_equal"] and 0 <= c["max_abs_diff"] <= 1e-5, (case, c)
        assert c["killed"], (case, c)
    assert r["engine_killed"]["attempts"] > 0  # some tasks were retried
    assert len(r["loads_after"]) > len(loads)  # a fresh engine after the kill
    # Nothing left: sockets gone after the executors stopped, nothing new in /dev/shm.
    assert r["sockets_left"] == []
    assert r["shm_new"] == []
