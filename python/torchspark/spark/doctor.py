"""``torchspark.doctor``: the Spark settings a model needs, derived from measurements.

Reads the job's Spark settings (a session's, or a mapping of them), measures
the model in a fresh Python worker (its size, the memory of one copy, the
engine's batch latency at several batch sizes, its thread scaling: see
:mod:`torchspark.model_profile`) and applies the rules of
:mod:`torchspark.spark.recommend`: every recommendation says the value, why,
and the numbers it rests on, and warns where a current setting will hurt.

``main(argv)`` is the command line (``python -m torchspark doctor``): it reads
``spark-defaults.conf`` (``$SPARK_CONF_DIR``, else ``$SPARK_HOME/conf``, or
``--properties-file``), then ``--master`` and ``--conf`` as spark-submit does,
without starting Spark (a cluster's master need not be reachable).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from typing import Any

import torch

from ..engine import usable_cores
from ..export import check_module, export_cached
from ..model_profile import ModelProfile, parse_input, probe_specs, profile_model
from .cluster_conf import ClusterConf
from .recommend import Diagnosis, recommend

__all__ = ["doctor", "main"]

_BATCH_SIZES = (16, 64, 256, 1024, 4096, 16384)


def doctor(
    spark: Any,
    model: str | os.PathLike[str] | torch.nn.Module,
    inputs: Any,
    *,
    device: str | None = None,
    batch_sizes: Sequence[int] | None = None,
    intra_op_threads: int | None = None,
    network_mb_s: float = 100.0,
    profile: ModelProfile | None = None,
) -> Diagnosis:
    """Recommend Spark settings for scoring with ``model``, and say why.

    Args:
        spark: a SparkSession or a DataFrame (its session's settings are
            read; nothing runs on it), or
            a mapping of Spark settings by name (``{"spark.master": "yarn",
            "spark.executor.cores": "8", ...}``; unset ones take Spark's
            defaults).
        model: a model file (from :func:`torchspark.export`) or an
            ``nn.Module`` (exported first, with the probe inputs).
        inputs: the model's inputs for the probe, one per argument in order:
            per-row specs such as ``"x:float32[16]"`` (``name:dtype[shape]``),
            or example tensors (a tensor, a tuple/list or a dict of them,
            batch dimension first).
        device: where to measure: by default an accelerator when the
            executors have GPUs and this machine has one, else the CPU.
        batch_sizes: batch sizes to time (default 16 to 16384 by 4x, plus
            the session's Arrow batch size).
        intra_op_threads: the ``predict`` option, if the job sets it.
        network_mb_s: the driver's bandwidth for shipping the model (an
            assumption; it is not measured).
        profile: measurements to reuse (from an earlier diagnosis'
            ``profile``) instead of measuring again.

    Returns a :class:`~torchspark.spark.recommend.Diagnosis`: ``recommendations``
    (setting, value, current, reason, measurement, warning), ``warnings``,
    ``spark_conf()`` (the settings to change); ``print`` it to read it.

    >>> diagnosis = torchspark.doctor({"spark.master": "k8s://https://k8s:443",
    ...                                "spark.executor.cores": "8"},
    ...                               path, ["x:float32[3]"], batch_sizes=[16, 256])
    >>> diagnosis.get("spark.locality.wait").value
    '0s'
    >>> print(diagnosis)
    torchspark doctor: model '...' (TorchScript, ...
    """
    if isinstance(spark, Mapping):
        conf = ClusterConf.from_mapping(spark)
    else:  # a SparkSession, or a DataFrame's
        conf = ClusterConf.from_session(getattr(spark, "sparkSession", spark))
    if profile is None:
        path = _model_file(model, inputs)
        sizes = set(batch_sizes or _BATCH_SIZES)
        if batch_sizes is None and conf.arrow_batch_rows > 0:
            sizes.add(conf.arrow_batch_rows)  # the current setting's throughput, measured
        cores = usable_cores()
        # Timings with a task's threads; scaling with at least 2 where there are 2 cores.
        threads = min(cores, intra_op_threads or conf.task_cpus)
        profile = profile_model(
            path,
            inputs,
            batch_sizes=sorted(sizes),
            device=device or _measuring_device(conf),
            threads=threads,
            scaling_threads=min(cores, max(2, threads)),
        )
    return recommend(conf, profile, intra_op_threads=intra_op_threads, network_mb_s=network_mb_s)


def _measuring_device(conf: ClusterConf) -> str:
    accelerator = torch.accelerator.is_available() and torch.accelerator.device_count() > 0
    if conf.executor_gpus > 0 and accelerator:
        return str(torch.accelerator.current_accelerator())
    return "cpu"


def _model_file(model: Any, inputs: Any) -> str:
    """A file for ``model``: a path as it is; a module exported with probe rows."""
    if isinstance(model, (str, os.PathLike)):
        return os.fspath(model)
    check_module(model, "doctor")
    specs = probe_specs(inputs)
    example: Any
    if specs is not None:
        example = tuple(s.rows(4, seed=n) for n, s in enumerate(specs))
    elif isinstance(inputs, Mapping):
        example = tuple(inputs.values())
    else:
        example = inputs
    return export_cached(model, example)


# ---------------------------------------------------------------------------
# The command line


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m torchspark doctor",
        description=(
            "Measure a model and recommend the Spark settings to score with it (task cpus, "
            "intra-op threads, Arrow batch size, GPU amount per task, executor memory "
            "overhead, timeouts, locality), each with the measurement behind it."
        ),
    )
    parser.add_argument("--model", required=True, help="model file (from torchspark.export)")
    parser.add_argument(
        "--input",
        action="append",
        required=True,
        metavar="NAME:DTYPE[SHAPE]",
        help="one model input per flag, in order: the shape of one row, e.g. x:float32[16]",
    )
    parser.add_argument("--master", help="Spark master URL, as for spark-submit")
    parser.add_argument(
        "--conf", action="append", default=[], metavar="KEY=VALUE", help="a Spark setting"
    )
    parser.add_argument(
        "--properties-file",
        help="settings file (default: spark-defaults.conf in $SPARK_CONF_DIR or $SPARK_HOME/conf)",
    )
    parser.add_argument("--device", help="where to measure (default: see torchspark.doctor)")
    parser.add_argument(
        "--batch-sizes", help="comma-separated batch sizes to time (default 16..16384 by 4x)"
    )
    parser.add_argument("--intra-op-threads", type=int, help="predict's option, if the job sets it")
    parser.add_argument(
        "--network-mb-s", type=float, default=100.0, help="assumed driver bandwidth (MB/s)"
    )
    parser.add_argument("--json", action="store_true", help="print the diagnosis as JSON")
    return parser


def _read_properties(path: str) -> dict[str, str]:
    """spark-defaults.conf: ``key value`` (or ``key=value``) lines, ``#`` comments."""
    settings = {}
    with open(path) as f:
        for line in f:
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            key, _, value = line.replace("=", " ", 1).partition(" ")
            settings[key.strip()] = value.strip()
    return settings


def _defaults_file() -> str | None:
    directory = os.environ.get("SPARK_CONF_DIR") or (
        os.path.join(os.environ["SPARK_HOME"], "conf") if "SPARK_HOME" in os.environ else None
    )
    if directory is None:
        return None
    path = os.path.join(directory, "spark-defaults.conf")
    return path if os.path.isfile(path) else None


def settings_of(args: argparse.Namespace) -> dict[str, str]:
    """The settings as spark-submit would see them: file, then --master, then --conf."""
    settings: dict[str, str] = {}
    properties = args.properties_file or _defaults_file()
    if properties is not None:
        settings.update(_read_properties(properties))
    if args.master:
        settings["spark.master"] = args.master
    for item in args.conf:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise SystemExit(f"torchspark doctor: --conf expects KEY=VALUE, got {item!r}")
        settings[key.strip()] = value.strip()
    return settings


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m torchspark doctor``: print the diagnosis (``--json``: as JSON); returns 0
    (bad arguments exit with argparse's status 2). For example::

        python -m torchspark doctor --model model.pt --input x:float32[16] --master yarn \\
            --conf spark.executor.cores=8 --conf spark.executor.memory=16g
    """
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        inputs = [parse_input(spec) for spec in args.input]
        sizes = (
            [int(b) for b in args.batch_sizes.split(",") if b.strip()] if args.batch_sizes else None
        )
    except ValueError as e:
        parser.error(str(e))
    diagnosis = doctor(
        settings_of(args),
        args.model,
        inputs,
        device=args.device,
        batch_sizes=sizes,
        intra_op_threads=args.intra_op_threads,
        network_mb_s=args.network_mb_s,
    )
    if args.json:
        print(json.dumps(_as_json(diagnosis), indent=2))
    else:
        print(diagnosis)
    return 0


def _as_json(diagnosis: Diagnosis) -> dict[str, Any]:
    conf = asdict(diagnosis.conf)
    conf["explicit"] = sorted(conf["explicit"])
    return {
        "conf": conf,
        "profile": asdict(diagnosis.profile),
        "recommendations": [asdict(r) for r in diagnosis.recommendations],
        "spark_conf": diagnosis.spark_conf(),
    }


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
