"""deploy/k8s/score_job.py run with ``spark-submit`` on ``local-cluster[2,1,1024]``,
by tests/test_deploy.py.

``python spark_submit_job.py WORKDIR`` writes a Parquet input (several files,
so that tasks spread over both executors) and a TorchScript model, submits the
job with the manifest's Spark settings (deploy/k8s/sparkapplication.yaml's
``sparkConf``, less ``spark.task.cpus``: these executors have one core each),
reads the output back with pyarrow and compares it with eager PyTorch here.
Writes ``WORKDIR/result.json``.
"""

from __future__ import annotations

import json
import os
import sys
import time

import yaml
from local_submit import submit

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
ROWS = 5000
FILES = 6
FEATURES = 5


def main(workdir: str) -> dict:
    import pyarrow as pa
    import pyarrow.parquet as pq
    import torch

    import torchspark

    started = time.monotonic()
    torch.manual_seed(7)
    model = torch.nn.Sequential(
        torch.nn.Linear(FEATURES, 12), torch.nn.GELU(), torch.nn.Linear(12, 1), torch.nn.Flatten(0)
    ).eval()
    model_path = torchspark.export(model, torch.randn(4, FEATURES), f"{workdir}/scorer.pt")
    source = os.path.join(workdir, "input.parquet")
    os.makedirs(source)
    features = torch.randn(ROWS, FEATURES)
    per_file = ROWS // FILES + 1
    for i, start in enumerate(range(0, ROWS, per_file)):
        rows = range(start, min(start + per_file, ROWS))
        table = pa.table(
            {
                "id": pa.array(list(rows), pa.int64()),
                "features": pa.array(features[start : rows.stop].tolist(), pa.list_(pa.float32())),
                "label": pa.array([f"row {r}" for r in rows]),
            }
        )
        pq.write_table(table, os.path.join(source, f"part-{i}.parquet"))

    with open(os.path.join(ROOT, "deploy", "k8s", "sparkapplication.yaml")) as f:
        manifest = yaml.safe_load(f)
    conf = {k: v for k, v in manifest["spec"]["sparkConf"].items() if k != "spark.task.cpus"}
    output = os.path.join(workdir, "scored.parquet")
    job = submit(
        workdir,
        [
            os.path.join(ROOT, "deploy", "k8s", "score_job.py"),
            *("--model", model_path, "--input", source, "--output", output),
            *("--inputs", "features", "--keep", "id"),
        ],
        conf=conf,
        env={"PYSPARK_PYTHON": sys.executable},  # the executors need torchspark: this venv's
    )
    result: dict = {"returncode": job.returncode, "conf": conf}
    result["stdout"] = job.stdout[-3000:]
    if job.returncode != 0:
        result["stderr"] = job.stderr[-6000:]
        return result
    result["seconds"] = round(time.monotonic() - started, 1)

    scored = pq.read_table(output).sort_by("id")
    result["columns"] = scored.column_names
    result["output_files"] = sorted(p for p in os.listdir(output) if p.endswith(".parquet"))
    ids = scored.column("id").to_pylist()
    result["rows"] = len(ids)
    result["distinct_ids"] = len(set(ids))
    result["ids_equal"] = ids == list(range(ROWS))
    with torch.no_grad():
        expected = model(features)
    got = torch.tensor(scored.column("prediction").to_pylist())
    result["max_abs_diff"] = float((got - expected[ids]).abs().max())
    return result


if __name__ == "__main__":
    workdir = os.path.abspath(sys.argv[1])
    out = main(workdir)
    with open(os.path.join(workdir, "result.json"), "w") as f:
        json.dump(out, f, indent=1)
