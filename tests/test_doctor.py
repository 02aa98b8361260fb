"""torchspark.doctor: Spark settings read, a model measured, the rules applied.

The rules are checked on profiles written here (so each expectation is worked
out from the rule's arithmetic, not from a measurement); the measurements are
checked against independent references (the eager module's parameters and
buffers, activations a batch must hold, latency that grows with rows); the
API and the command line run end to end on a real model and session.
"""

from __future__ import annotations

import doctest
import json
import math
import os

import pytest
import torch

import torchspark
from torchspark.__main__ import main as torchspark_command
from torchspark.model_profile import BatchTiming, ModelProfile, parse_input, profile_model
from torchspark.spark.cluster_conf import ClusterConf
from torchspark.spark.doctor import main
from torchspark.spark.recommend import recommend

MiB = 2**20
WIDTH = 256
HIDDEN = 512


class Wide(torch.nn.Module):
    """[rows, 256] -> [rows, 8] through two 512-wide layers: cost grows with rows.
    BatchNorm brings buffers (running mean/var and an int64 counter)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = torch.nn.Sequential(
            torch.nn.Linear(WIDTH, HIDDEN),
            torch.nn.BatchNorm1d(HIDDEN),
            torch.nn.ReLU(),
            torch.nn.Linear(HIDDEN, HIDDEN),
            torch.nn.ReLU(),
            torch.nn.Linear(HIDDEN, 8),
        )
        self.eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


@pytest.fixture(scope="module")
def wide_path(tmp_path_factory) -> str:
    path = str(tmp_path_factory.mktemp("doctor") / "wide.pt")
    return torchspark.export(Wide(), torch.randn(4, WIDTH), path)


@pytest.fixture(scope="module")
def measured(wide_path) -> ModelProfile:
    return profile_model(
        wide_path, [f"x:float32[{WIDTH}]"], batch_sizes=[16, 256, 2048], scaling_threads=2
    )


def made(timings=((256, 0.01), (1024, 0.02), (4096, 0.08)), **fields) -> ModelProfile:
    """A profile with chosen figures (no measurement)."""
    values = {
        "path": "model.pt",
        "format": "TorchScript",
        "device": "cpu",
        "file_bytes": 100 * MiB,
        "weights_bytes": 100 * MiB,
        "worker_bytes": 200 * MiB,
        "load_bytes": 110 * MiB,
        "load_seconds": 0.5,
        "address_space_bytes": 900 * MiB,
        "threads": 1,
        "timings": [BatchTiming(rows, seconds, 3, rows * 1024) for rows, seconds in timings],
        "scaling_threads": 2,
        "one_thread_seconds": 0.02,
        "scaling_seconds": 0.018,
    }
    values.update(fields)
    return ModelProfile(**values)


def conf(**settings) -> ClusterConf:
    return ClusterConf.from_mapping({k.replace("_", "."): v for k, v in settings.items()})


# ---------------------------------------------------------------------------
# Reading the settings


def test_settings_follow_spark_defaults_per_cluster_manager():
    yarn = ClusterConf.from_mapping({"spark.master": "yarn", "spark.executor.memory": "16g"})
    assert (yarn.manager, yarn.executor_cores, yarn.task_cpus) == ("yarn", 1, 1)
    # overhead: max(384 MiB, 0.1 x executor memory)
    assert yarn.executor_memory_mb == 16 * 1024
    assert yarn.memory_overhead_mb == int(16 * 1024 * 0.1)
    small = ClusterConf.from_mapping({"spark.master": "k8s://https://k:443"})
    assert (small.manager, small.memory_overhead_mb) == ("kubernetes", 384)
    assert ClusterConf.from_mapping({"spark.master": "spark://h:7077"}).executor_cores is None
    local = ClusterConf.from_mapping({"spark.master": "local[3]"})
    assert (local.manager, local.executor_cores, local.executor_instances) == ("local", 3, 1)
    cluster = ClusterConf.from_mapping({"spark.master": "local-cluster[2,3,1024]"})
    assert (cluster.executor_instances, cluster.executor_cores) == (2, 3)
    # defaults: Arrow batches of 10000 rows, 120 s network, 60 s fetch, 3 s locality
    assert (yarn.arrow_batch_rows, yarn.network_timeout_s) == (10000, 120)
    assert (yarn.fetch_timeout_s, yarn.locality_wait_s) == (60, 3)


def test_settings_parse_sizes_and_durations_as_spark_does():
    c = ClusterConf.from_mapping(
        {
            "spark.master": "yarn",
            "spark.executor.memory": "2048",  # bare: MiB
            "spark.executor.memoryOverhead": "3g",
            "spark.executor.pyspark.memory": "512m",
            "spark.network.timeout": "2min",
            "spark.files.fetchTimeout": "90",  # bare: seconds
            "spark.locality.wait": "500",  # bare: milliseconds
            "spark.executor.resource.gpu.amount": "2",
            "spark.task.resource.gpu.amount": "0.25",
            "spark.executor.cores": "16",
        }
    )
    assert (c.executor_memory_mb, c.memory_overhead_mb, c.pyspark_memory_mb) == (2048, 3072, 512)
    assert (c.network_timeout_s, c.fetch_timeout_s, c.locality_wait_s) == (120, 90, 0.5)
    # 0.25 of a GPU: 4 tasks per GPU, 2 GPUs -> 8 slots, fewer than the 16 cores
    assert (c.gpu_slots, c.concurrent_tasks) == (8, 8)
    with pytest.raises(ValueError, match=r"spark.executor.memory: expected a size.*'lots'"):
        ClusterConf.from_mapping({"spark.executor.memory": "lots"})


def test_settings_of_a_live_session(spark):
    c = ClusterConf.from_session(spark)
    assert (c.master, c.manager, c.executor_cores) == ("local[2,4]", "local", 2)
    key = "spark.sql.execution.arrow.maxRecordsPerBatch"
    before = spark.conf.get(key, None)
    spark.conf.set(key, "64")
    try:
        assert ClusterConf.from_session(spark).arrow_batch_rows == 64
        assert key in ClusterConf.from_session(spark).explicit
    finally:
        spark.conf.unset(key) if before is None else spark.conf.set(key, before)


# ---------------------------------------------------------------------------
# The rules, on profiles written here


def test_a_whole_gpu_per_task_with_8_cores_is_a_warning():
    c = ClusterConf.from_mapping(
        {
            "spark.master": "yarn",
            "spark.executor.cores": "8",
            "spark.executor.resource.gpu.amount": "1",
            "spark.task.resource.gpu.amount": "1",
        }
    )
    d = recommend(c, made())
    gpu = d.get("spark.task.resource.gpu.amount")
    assert gpu.warning and "7 of its 8 cores stay idle" in gpu.warning
    # 8 tasks share the GPU: Spark runs floor(1 / amount) tasks per GPU
    assert math.floor(1 / float(gpu.value)) == 8 and float(gpu.value) <= 1 / 8
    assert "share='executor' (when available)" in gpu.reason
    assert d.get("spark.task.cpus").value == "1"
    assert d.get("spark.locality.wait").value == "0s"  # GPU slots should not wait
    # 6 cores and 2 GPUs: 3 tasks per GPU
    c2 = ClusterConf.from_mapping(
        {
            "spark.master": "k8s://x",
            "spark.executor.cores": "6",
            "spark.executor.resource.gpu.amount": "2",
            "spark.task.resource.gpu.amount": str(1 / 3),
        }
    )
    gpu2 = recommend(c2, made()).get("spark.task.resource.gpu.amount")
    assert math.floor(1 / float(gpu2.value)) == 3 and gpu2.warning is None


def test_gpus_without_a_task_amount_are_a_warning():
    c = ClusterConf.from_mapping(
        {
            "spark.master": "yarn",
            "spark.executor.cores": "4",
            "spark.executor.resource.gpu.amount": "1",
        }
    )
    gpu = recommend(c, made()).get("spark.task.resource.gpu.amount")
    assert gpu.current is None and "no GPU address" in gpu.warning
    assert math.floor(1 / float(gpu.value)) == 4


def test_executor_memory_must_hold_a_worker_per_concurrent_task():
    profile = made()
    c = ClusterConf.from_mapping(
        {"spark.master": "k8s://x", "spark.executor.cores": "4", "spark.executor.memory": "4g"}
    )
    d = recommend(c, profile)
    memory = d.get("spark.executor.memoryOverhead")
    batch = int(d.get("spark.sql.execution.arrow.maxRecordsPerBatch").value)
    # per worker: Python with torchspark + the larger of the measured load and the
    # weights + the working memory measured for the batch (batch rows x 1024 here)
    per_worker = 200 * MiB + max(110 * MiB, 100 * MiB) + batch * 1024
    needed_mb = math.ceil(4 * per_worker / MiB)
    assert memory.value == f"{384 + needed_mb}m"
    assert memory.current == f"{max(384, int(4096 * 0.1))}m"
    assert memory.warning and f"need {needed_mb} MiB" in memory.warning
    assert "share='executor' (when available)" in memory.reason
    # enough overhead: no warning, nothing to change
    roomy = ClusterConf.from_mapping(
        {
            "spark.master": "k8s://x",
            "spark.executor.cores": "4",
            "spark.executor.memoryOverhead": "8g",
        }
    )
    kept = recommend(roomy, profile).get("spark.executor.memoryOverhead")
    assert kept.warning is None and kept.value == kept.current == "8192m"
    # local mode: no container, no overhead to size
    assert (
        recommend(conf(spark_master="local[2]"), profile).get("spark.executor.memoryOverhead")
        is None
    )


def test_local_workers_must_fit_the_machine():
    c = ClusterConf.from_mapping({"spark.master": "local[8]"})
    profile = made()  # a worker: 200 + 110 MiB + the batch's working memory
    batch = 10000
    worker = 200 * MiB + 110 * MiB + batch * 1024
    tight = recommend(c, profile, physical_memory=3 * worker).get("spark.master")
    assert tight.value == "local[3]" and "8 concurrent tasks need" in tight.warning
    roomy = recommend(c, profile, physical_memory=8 * worker).get("spark.master")
    assert roomy.value == "local[8]" and roomy.warning is None


def test_pyspark_memory_below_a_workers_address_space_is_a_warning():
    c = ClusterConf.from_mapping(
        {"spark.master": "yarn", "spark.executor.cores": "8", "spark.executor.pyspark.memory": "2g"}
    )
    rec = recommend(c, made(address_space_bytes=900 * MiB)).get("spark.executor.pyspark.memory")
    # PySpark's limit per worker: pyspark memory / executor cores = 256 MiB < 900 MiB
    assert rec.warning and "at most 256 MiB" in rec.warning and "900 MiB" in rec.warning
    assert rec.value == f"{900 * 8}m"


@pytest.mark.parametrize(
    ("current", "value", "warns"),
    [(64, 1024, True), (512, 1024, False), (10000, 10000, False), (0, 1024, True)],
)
def test_arrow_batch_size_against_the_throughput_knee(current, value, warns):
    # rows/s: 16 -> 1.6k, 256 -> 51.2k, 1024 -> 95.3k, 4096 -> 100k: the knee (>= 90% of
    # the best) is 1024 rows
    timings = ((16, 0.01), (256, 0.005), (1024, 1024 / 95_300), (4096, 0.04096))
    c = ClusterConf.from_mapping(
        {"spark.master": "local[2]", "spark.sql.execution.arrow.maxRecordsPerBatch": str(current)}
    )
    rec = recommend(c, made(timings=timings)).get("spark.sql.execution.arrow.maxRecordsPerBatch")
    assert rec.value == str(value)
    assert bool(rec.warning) == warns
    assert "1024 rows" in rec.measurement and "1.6k rows/s" in rec.measurement


def test_task_cpus_follow_the_measured_thread_scaling():
    c = ClusterConf.from_mapping({"spark.master": "yarn", "spark.executor.cores": "8"})
    # 1.9x on 2 threads (efficiency 0.95): tasks of 2 threads, half the model copies
    scales = recommend(c, made(one_thread_seconds=0.019, scaling_seconds=0.01))
    assert scales.get("spark.task.cpus").value == "2"
    assert "1.90x" in scales.get("spark.task.cpus").measurement
    # 1.1x on 2 threads: one task per core
    flat = recommend(c, made(one_thread_seconds=0.011, scaling_seconds=0.01))
    assert flat.get("spark.task.cpus").value == "1"
    # 3 cpus per task on 8 cores: 2 cores never run a task
    odd = ClusterConf.from_mapping(
        {"spark.master": "yarn", "spark.executor.cores": "8", "spark.task.cpus": "3"}
    )
    assert "2 core(s) never run a task" in recommend(odd, made()).get("spark.task.cpus").warning
    # 4 cpus per task, threads that do not scale: a warning
    wide = ClusterConf.from_mapping(
        {"spark.master": "yarn", "spark.executor.cores": "8", "spark.task.cpus": "4"}
    )
    warning = recommend(wide, made(one_thread_seconds=0.011, scaling_seconds=0.01))
    assert "4 tasks of one thread each" in warning.get("spark.task.cpus").warning


def test_more_intra_op_threads_than_cores_is_a_warning():
    c = ClusterConf.from_mapping({"spark.master": "local[2]"})
    rec = recommend(c, made(), intra_op_threads=4).get("predict(intra_op_threads=)")
    assert "4 intra-op threads x 2 concurrent tasks = 8 threads on 2 cores" in rec.warning
    assert recommend(c, made()).get("predict(intra_op_threads=)").warning is None


def test_timeouts_cover_shipping_a_large_model_to_every_executor():
    c = ClusterConf.from_mapping(
        {"spark.master": "yarn", "spark.executor.instances": "50", "spark.executor.cores": "4"}
    )
    profile = made(file_bytes=10 * 10**9, load_seconds=20.0)
    d = recommend(c, profile, network_mb_s=100)
    # 50 x 10 GB at 100 MB/s = 5000 s, + 20 s load, x 2
    for setting in ("spark.network.timeout", "spark.files.fetchTimeout"):
        assert d.get(setting).value == "10040s" and d.get(setting).warning
    assert "assumed, not measured" in d.get("spark.network.timeout").measurement
    small = recommend(c, made(file_bytes=MiB, load_seconds=0.1))
    assert small.get("spark.network.timeout").value == "120s"
    assert small.get("spark.network.timeout").warning is None
    assert recommend(conf(spark_master="local[2]"), profile).get("spark.network.timeout") is None


def test_locality_wait_on_kubernetes_only():
    k8s = recommend(ClusterConf.from_mapping({"spark.master": "k8s://x"}), made())
    assert k8s.get("spark.locality.wait").value == "0s"
    yarn = recommend(ClusterConf.from_mapping({"spark.master": "yarn"}), made())
    assert yarn.get("spark.locality.wait") is None


def test_the_diagnosis_reads_and_lists_the_changes():
    c = ClusterConf.from_mapping(
        {"spark.master": "k8s://x", "spark.executor.cores": "4", "spark.task.cpus": "3"}
    )
    d = recommend(c, made())
    changes = d.spark_conf()
    assert changes["spark.task.cpus"] == "1" and changes["spark.locality.wait"] == "0s"
    assert "spark.network.timeout" not in changes  # unchanged values are left out
    assert all(k.startswith("spark.") for k in changes)
    text = str(d)
    for r in d.recommendations:
        assert r.setting in text and r.measurement in text
    assert "WARNING:" in text and "spark-submit --conf spark.task.cpus=1" in text


# ---------------------------------------------------------------------------
# Measurements


def test_model_size_is_its_parameters_and_buffers(measured, wide_path):
    module = Wide()
    expected = sum(t.numel() * t.element_size() for t in [*module.parameters(), *module.buffers()])
    assert measured.weights_bytes == expected
    assert measured.file_bytes == os.path.getsize(wide_path)
    assert measured.copy_bytes >= expected


def test_latency_is_measured_and_grows_with_rows(measured):
    assert [t.rows for t in measured.timings] == [16, 256, 2048]
    assert all(t.seconds > 0 and t.calls >= 3 for t in measured.timings)
    # 128x the rows through two 512-wide layers
    assert measured.timing(2048).seconds > measured.timing(16).seconds
    # a 2048-row batch holds at least its input and one hidden activation
    assert measured.timing(2048).peak_bytes >= 2048 * (WIDTH + HIDDEN) * 4
    assert measured.worker_bytes > 0 and measured.address_space_bytes > measured.worker_bytes
    if os.cpu_count() and os.cpu_count() >= 2:
        assert measured.one_thread_seconds > 0 and measured.scaling_seconds > 0


def test_probe_inputs_parse_and_are_checked():
    assert parse_input("ids:int64[2,3]").rows(4).shape == (4, 2, 3)
    assert parse_input("age").rows(5).dtype == torch.float32
    assert parse_input("attention_mask:int64[8]").rows(2).eq(1).all()
    with pytest.raises(ValueError, match=r"input 'x:float32\[16': expected name:dtype"):
        parse_input("x:float32[16")
    with pytest.raises(ValueError, match="dtype 'complex7' is not one of"):
        parse_input("x:complex7[4]")


# ---------------------------------------------------------------------------
# End to end


def test_doctor_with_a_session_and_a_module(spark):
    d = torchspark.doctor(spark, Wide(), torch.randn(8, WIDTH), batch_sizes=[16, 256])
    assert d.conf.master == "local[2,4]"
    assert [t.rows for t in d.profile.timings] == [16, 256]
    module = Wide()
    size = sum(t.numel() * t.element_size() for t in [*module.parameters(), *module.buffers()])
    assert d.profile.weights_bytes == size
    batch = d.get("spark.sql.execution.arrow.maxRecordsPerBatch")
    assert batch.value == "10000"  # at or above the knee of 16/256 rows: kept
    assert d.get("spark.executor.memoryOverhead") is None  # local mode


def test_command_line(wide_path, capsys, tmp_path):
    defaults = tmp_path / "spark-defaults.conf"
    defaults.write_text("# a comment\nspark.executor.memory 8g\nspark.executor.cores=4\n")
    # Through the command table, as ``python -m torchspark doctor ...`` runs it.
    code = torchspark_command(
        [
            "doctor",
            "--model",
            wide_path,
            "--input",
            f"x:float32[{WIDTH}]",
            "--master",
            "k8s://https://k8s:443",
            "--properties-file",
            str(defaults),
            "--conf",
            "spark.sql.execution.arrow.maxRecordsPerBatch=16",
            "--batch-sizes",
            "16,256",
            "--json",
        ]
    )
    assert code == 0
    out = json.loads(capsys.readouterr().out)
    assert out["conf"]["executor_memory_mb"] == 8192 and out["conf"]["executor_cores"] == 4
    by_setting = {r["setting"]: r for r in out["recommendations"]}
    assert by_setting["spark.locality.wait"]["value"] == "0s"
    batch = by_setting["spark.sql.execution.arrow.maxRecordsPerBatch"]
    assert batch["current"] == "16"
    assert [t["rows"] for t in out["profile"]["timings"]] == [16, 256]
    assert out["spark_conf"]["spark.locality.wait"] == "0s"
    with pytest.raises(SystemExit) as exit:
        main(["--model", wide_path, "--input", "x:float32[", "--conf", "k=v"])
    assert exit.value.code == 2
    assert "expected name:dtype" in capsys.readouterr().err


def test_docstring_examples_run():
    import torchspark.model_profile as module

    failures, tried = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert tried >= 2 and failures == 0
