"""deploy/: the spark-operator manifests, the Docker image's recipe and the scoring job.

The manifests are checked against deploy/k8s/sparkapplication.schema.json (the
fields of kubeflow/spark-operator's ``sparkoperator.k8s.io/v1beta2``
SparkApplication that they use) with jsonschema, and their settings against
each other; score_job.py runs under ``spark-submit`` on ``local-cluster``
(tests/spark_submit_job.py) with the manifest's Spark settings. No container
engine here: the Dockerfile's install step, deploy/docker/install.sh, is what
tests/test_pack_env.py runs.
"""

from __future__ import annotations

import copy
import json
import os
import re
import subprocess
import sys

import jsonschema
import pytest
import yaml
from local_submit import run_job

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
K8S = os.path.join(ROOT, "deploy", "k8s")
MANIFESTS = ["sparkapplication.yaml", "sparkapplication-gpu.yaml"]

sys.path.insert(0, K8S)
import score_job  # noqa: E402  (deploy/k8s/score_job.py)


@pytest.fixture(scope="module")
def validator() -> jsonschema.Draft202012Validator:
    with open(os.path.join(K8S, "sparkapplication.schema.json")) as f:
        schema = json.load(f)
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def manifest(name: str) -> dict:
    with open(os.path.join(K8S, name)) as f:
        return yaml.safe_load(f)


@pytest.mark.parametrize("name", MANIFESTS)
def test_manifest_follows_the_operator_api(validator, name):
    app = manifest(name)
    errors = [f"{list(e.path)}: {e.message}" for e in validator.iter_errors(app)]
    assert errors == []
    assert app["apiVersion"] == "sparkoperator.k8s.io/v1beta2"


def test_schema_refuses_what_the_operator_would_not_take(validator):
    """The schema can fail: a misspelled field, an unquoted Spark setting (the
    API's sparkConf is map[string]string), a wrong enum, a fractional core."""
    app = manifest("sparkapplication.yaml")
    cases = {
        "executor.instance": lambda a: a["spec"]["executor"].update(instance=2),
        "sparkConf int": lambda a: a["spec"]["sparkConf"].update({"spark.task.cpus": 2}),
        "mode": lambda a: a["spec"].update(mode="yarn"),
        "cores": lambda a: a["spec"]["driver"].update(cores=0.5),
        "memory": lambda a: a["spec"]["driver"].update(memory="2 GB"),
        "gpu": lambda a: a["spec"]["executor"].update(gpu={"name": "nvidia.com/gpu"}),
        "apiVersion": lambda a: a.update(apiVersion="sparkoperator.k8s.io/v1beta1"),
    }
    for what, change in cases.items():
        broken = copy.deepcopy(app)
        change(broken)
        assert list(validator.iter_errors(broken)), what


@pytest.mark.parametrize("name", MANIFESTS)
def test_manifest_settings_fit_together(name):
    spec = manifest(name)["spec"]
    conf = spec["sparkConf"]
    for key in (
        "spark.sql.execution.arrow.maxRecordsPerBatch",
        "spark.task.cpus",
        "spark.locality.wait",
        "spark.network.timeout",
    ):
        assert key in conf, key
    executor = spec["executor"]
    task_cpus = int(conf["spark.task.cpus"])
    assert executor["cores"] % task_cpus == 0  # no idle cores
    # The image's job file, and arguments that the job accepts.
    with open(os.path.join(ROOT, "deploy", "docker", "Dockerfile")) as f:
        dockerfile = f.read()
    assert spec["sparkVersion"] == re.search(r"apache/spark:([0-9.]+)-", dockerfile).group(1)
    assert spec["mainApplicationFile"] == "local:///opt/torchspark/score_job.py"
    assert "COPY deploy/k8s/score_job.py /opt/torchspark/score_job.py" in dockerfile
    args = score_job.parse_args(spec["arguments"])
    assert args.inputs == "features" and args.keep == "id"
    mounts = {m["name"] for m in spec["driver"]["volumeMounts"] + executor["volumeMounts"]}
    assert mounts <= {v["name"] for v in spec["volumes"]}
    gpu = executor.get("gpu")
    if gpu is None:
        assert not any(
            k.startswith(("spark.executor.resource.gpu", "spark.task.resource.gpu")) for k in conf
        )
        return
    # GPU variant: Spark's resource scheduling agrees with the pod's request,
    # and the executor's tasks share its GPUs without asking for more.
    assert int(conf["spark.executor.resource.gpu.amount"]) == gpu["quantity"]
    assert conf["spark.executor.resource.gpu.discoveryScript"].startswith("/opt/spark/")
    slots = executor["cores"] // task_cpus
    assert slots * float(conf["spark.task.resource.gpu.amount"]) <= gpu["quantity"]


def test_dockerfile_installs_with_the_script_ci_runs():
    with open(os.path.join(ROOT, "deploy", "docker", "Dockerfile")) as f:
        dockerfile = f.read()
    base = re.search(r"^ARG SPARK_IMAGE=(\S+)$", dockerfile, re.M).group(1)
    assert base.startswith("apache/spark:4.") and "java17" in base and "python3" in base
    assert "bash /opt/torchspark/install.sh /tmp/torchspark-dist python3" in dockerfile
    for source in re.findall(r"^COPY (\S+) ", dockerfile, re.M):
        assert os.path.exists(os.path.join(ROOT, source)) or source == "dist/", source
    # install.sh refuses a directory without a wheel for the Python it is given.
    empty = subprocess.run(
        ["bash", os.path.join(ROOT, "deploy", "docker", "install.sh"), HERE, sys.executable],
        capture_output=True,
        text=True,
    )
    assert empty.returncode == 1
    assert "no torchspark wheel for cp3" in empty.stderr


@pytest.mark.spark
def test_score_job_under_spark_submit_scores_every_row_once(tmp_path):
    r = run_job("spark_submit_job.py", tmp_path, timeout=480)
    assert r["returncode"] == 0, r.get("stderr")
    assert "score_job: 5000 rows in " in r["stdout"]
    assert r["columns"] == ["id", "prediction"]
    assert r["rows"] == r["distinct_ids"] == 5000 and r["ids_equal"] is True
    assert r["max_abs_diff"] < 1e-5
    assert r["conf"]["spark.locality.wait"] == "0s"
    print(f"\nspark-submit job: {r['seconds']} s")
