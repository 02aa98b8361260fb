"""The same engine on Ray Data: :class:`Predictor` for ``Dataset.map_batches``.

``Predictor`` is a callable class: Ray Data makes one per actor of the pool
(``concurrency``), which loads the model once into a :class:`torchspark.Engine`,
and calls it with each Arrow batch (``batch_format="pyarrow"``). It returns
the batch's columns (``keep``) and one column per model output, of the same
types as :func:`torchspark.predict` gives in Spark. ``inputs`` are those of
``predict``: a column, a list of scalar columns, :class:`torchspark.Input`
specs (token ids, text, images), a list or a dict of them. The engine
converts, batches and runs the model in native threads (GIL released).

The model: a path every actor can read, a URI that ``pyarrow.fs`` reads
(``s3://``, ``gs://``, ``hdfs://``, ``file://``: fetched once per node into
the model cache), or a file :func:`put` into Ray's object store once (each
node writes it into its model cache, named by its sha256, and checks the
digest). Tokenizers are shipped the same way:
``Input("text", kind="text", tokenizer=put("tokenizer.json"))``.

Each actor runs on the GPU Ray gave it (``num_gpus``) or the CPU, with
torch's intra-op threads set from its ``num_cpus``. Each call sends a record
(rows, Arrow batches, model calls, latency, device) to a small detached actor;
:func:`last_report` sums those of the newest dataset run into a
:class:`torchspark.Report`. An error names the model and, for a bad value, the
actor, the Arrow batch, the row and its first kept column's value (the id), as
in Spark.

>>> import os, tempfile, pyarrow as pa, ray, torch, torchspark
>>> from torchspark.ray import Predictor, put, last_report
>>> path = torchspark.export(torch.nn.Linear(3, 1), torch.randn(4, 3),
...                          os.path.join(tempfile.mkdtemp(), "model.pt"))
>>> ds = ray.data.from_arrow(pa.table({
...     "id": [1, 2],
...     "x": pa.array([[1.0, 2.0, 3.0], [0.5, 0.5, 0.5]], pa.list_(pa.float32())),
... }))
>>> scored = ds.map_batches(
...     Predictor,
...     fn_constructor_kwargs={"model": put(path), "inputs": "x", "keep": ["id"]},
...     batch_format="pyarrow",
...     compute=ray.data.ActorPoolStrategy(size=1),  # or concurrency=1 (Ray < 2.51)
... )
>>> scored.schema().names
['id', 'prediction']
>>> sorted(row["id"] for row in scored.take_all())
[1, 2]
>>> last_report().rows
2
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import logging
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from .distribute import ModelRef, _is_uri, cache_dir, private_dir
from .engine import Input, _resolve_device, size_intra_op_threads
from .spark.plan import check_engine_options, engine_inputs, plan_inputs
from .spark.report import Report, _summarise
from .spark.worker import _cached_engine, _configure_logger, new_stats, score, task_record
from .text import tokenizer_file

__all__ = ["ObjectFile", "Predictor", "last_report", "put"]

logger = logging.getLogger("torchspark")

# The detached actor that keeps the calls' records, and how many dataset runs it keeps.
_RECORDS = "torchspark_records"
_NAMESPACE = "torchspark"
_RUNS_KEPT = 32
_RECORD_TIMEOUT_S = 30.0


# ---------------------------------------------------------------------------
# Shipping files through the object store


@dataclass(frozen=True)
class ObjectFile(ModelRef):
    """A model or tokenizer file in Ray's object store, from :func:`put`:
    ``location`` is its file name, ``sha256`` its digest. Passed to the actors
    (in ``fn_constructor_kwargs``) it carries the object's reference; each
    node writes the bytes once into its model cache."""

    object_ref: Any = field(default=None, compare=False, repr=False)


def put(file: Any) -> ObjectFile:
    """Put a model or tokenizer into Ray's object store, once; its reference
    goes to the actors as ``model=`` or an Input's ``tokenizer=``.

    ``file``: a model file (from :func:`torchspark.export`), a
    ``tokenizer.json`` or a model directory holding one, a
    ``tokenizers.Tokenizer`` or a ``transformers`` fast tokenizer.
    """
    import ray

    if isinstance(file, (str, os.PathLike)) and not os.path.isdir(file):
        path = os.fspath(file)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"put: '{path}': no such file")
    else:
        path = tokenizer_file(file)  # a tokenizer, or a directory holding one
        assert isinstance(path, str)
    with open(path, "rb") as f:
        data = f.read()
    digest = hashlib.sha256(data).hexdigest()
    return ObjectFile("object", os.path.basename(path), digest, object_ref=ray.put(data))


def _local(ref: ModelRef) -> ModelRef:
    """``ref`` as a file of this node: an :class:`ObjectFile` is written into
    the model cache (``$TORCHSPARK_CACHE``) under its digest, once per node,
    through a temporary file renamed into place (actors of one node may race)."""
    if not isinstance(ref, ObjectFile):
        return ref
    directory = os.path.join(cache_dir(), "objects", ref.sha256 or "")
    target = os.path.join(directory, ref.name)
    if not os.path.isfile(target):
        import ray

        data = ray.get(ref.object_ref)
        digest = hashlib.sha256(data).hexdigest()
        if digest != ref.sha256:
            raise ValueError(
                f"model '{ref.name}': the object store holds sha256 {digest}, expected {ref.sha256}"
            )
        private_dir(directory)
        fd, tmp = tempfile.mkstemp(prefix=f".{ref.name}.", dir=directory)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.replace(tmp, target)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise
    return ModelRef("path", target, ref.sha256)  # fetch() checks the digest of the file


def _model_ref(model: Any, sha256: str | None) -> ModelRef:
    expected = sha256.lower() if sha256 else None
    if isinstance(model, ObjectFile):
        if expected and expected != model.sha256:
            raise ValueError(f"model '{model.name}': sha256 is {model.sha256}, expected {expected}")
        return model
    if isinstance(model, (str, os.PathLike)):
        location = os.fspath(model)
        if _is_uri(location):
            return ModelRef("uri", location, expected)
        return ModelRef("path", os.path.abspath(location), expected)
    raise TypeError(
        "Predictor: model= expected a path the actors can read, a URI (s3://, gs://, hdfs://, "
        f"file://) or torchspark.ray.put(...), got {type(model).__name__}"
    )


def _local_input(spec: Input) -> Input:
    if isinstance(spec.tokenizer, ObjectFile):
        return dataclasses.replace(spec, tokenizer=_local(spec.tokenizer))
    return spec


# ---------------------------------------------------------------------------
# The actor's device and threads


def _ray(actor: bool = True) -> Any:
    """The ray module when this process is a Ray actor (``actor``) or
    connected to a Ray cluster (driver included), else None."""
    try:
        import ray
    except ImportError:
        return None
    if not ray.is_initialized():
        return None
    return ray if not actor or ray.get_runtime_context().get_actor_id() is not None else None


def _actor_device(device: str) -> torch.device:
    """``"auto"``: the GPU Ray assigned to this actor, else the CPU (never a
    GPU Ray did not assign); outside an actor, the engine's own choice."""
    if device != "auto":
        return torch.device(device)
    ray = _ray()
    if ray is None:
        return _resolve_device("auto")
    gpus = ray.get_gpu_ids()
    accelerator = torch.accelerator.current_accelerator()
    if not gpus or accelerator is None or torch.accelerator.device_count() == 0:
        return torch.device("cpu")
    # Ray narrows CUDA_VISIBLE_DEVICES to the actor's GPUs: the first is index 0.
    narrowed = os.environ.get("CUDA_VISIBLE_DEVICES") is not None
    return torch.device(accelerator.type, 0 if narrowed else int(gpus[0]))


def _actor_cpus() -> int | None:
    """The CPUs Ray reserved for this actor (``num_cpus``, default 1), None outside an actor."""
    ray = _ray()
    if ray is None:
        return None
    cpus = ray.get_runtime_context().get_assigned_resources().get("CPU")
    return max(1, int(cpus)) if cpus else None


# ---------------------------------------------------------------------------
# The map_batches class


class Predictor:
    """Runs a TorchScript, AOTInductor or ONNX model on the Arrow batches of
    ``Dataset.map_batches(Predictor, fn_constructor_kwargs={...},
    batch_format="pyarrow", concurrency=..., num_gpus=...)``.

    Args (``fn_constructor_kwargs``):
        model: a path every actor can read, a URI that ``pyarrow.fs`` reads
            (fetched once per node into ``$TORCHSPARK_CACHE``), or
            :func:`put`'s result (the object store).
        inputs: as in :func:`torchspark.predict`: ``"features"`` (one column),
            ``["a", "b"]`` (scalar columns gathered to ``[N, F]``), an
            :class:`torchspark.Input` (``kind="pad"``, ``"text"``,
            ``"image"``...), a list of them (positional) or a dict by the
            model's argument names.
        output: the prediction column's name (numbered for several outputs;
            a dict output keeps its keys; a list names each).
        keep: the columns passed through (zero-copy); default: every column.
        device: ``"auto"``: the GPU Ray assigned to the actor (``num_gpus``),
            else the CPU; or a torch device.
        batch_size, precision, sha256, engine options (``max_tokens``,
            ``max_delay_ms``, ``threads``, ``intra_op_threads``,
            ``inflight``, ``static_batch``, ``sort_window``, ``per_token``):
            see :class:`torchspark.Engine`. On the CPU, torch's intra-op
            threads are the actor's ``num_cpus`` unless ``intra_op_threads``
            says otherwise.
        label: the column whose value names a failing row (default: the
            first kept one).

    The model loads when Ray makes the actor: a missing file or a model that
    does not load fails there, before any batch.
    """

    def __init__(
        self,
        model: Any,
        *,
        inputs: Any,
        output: str | Sequence[str] = "prediction",
        keep: Sequence[str] | None = None,
        device: str = "auto",
        batch_size: int = 4096,
        precision: str = "fp32",
        sha256: str | None = None,
        label: str | None = None,
        **engine_options: Any,
    ) -> None:
        _configure_logger()
        specs, names = plan_inputs(inputs)
        self.specs = engine_inputs([_local_input(spec) for spec in specs], names)
        self.ref = _local(_model_ref(model, sha256))
        self.output = output
        self.keep = list(keep) if keep is not None else None
        self.label = label
        options = check_engine_options(batch_size, precision, engine_options)
        self.device = _actor_device(device)
        if self.device.type == "cpu":
            size_intra_op_threads(1, options.get("intra_op_threads") or _actor_cpus())
        self.engine = _cached_engine(self.ref, self.device, self.specs, options)
        ray = _ray()
        self._actor = ray.get_runtime_context().get_actor_id() if ray is not None else None
        self._records: Any = None
        self._calls = 0
        self._outputs: list[Any] | None = None  # output fields of the last call

    def __call__(self, batch: Any) -> Any:
        """The outputs of one batch (a ``pyarrow.Table``): a ``pyarrow.Table``
        of the ``keep`` columns and the output columns, row for row. A batch
        of no rows gets the output columns of the actor's earlier calls; as
        its first call, it runs the model on no rows (a model or a list
        column that cannot say its width then fails)."""
        import pyarrow as pa

        table = _table(batch)
        keep = self.keep if self.keep is not None else list(table.column_names)
        missing = [c for c in keep if c not in table.column_names]
        if missing:
            raise ValueError(f"keep: columns {missing} are not in the batch {table.column_names}")
        label = self.label if self.label is not None else (keep[0] if keep else None)
        if table.num_rows == 0 and self._outputs is not None:
            # No rows: the output columns of the earlier calls, empty (a list
            # column of no rows has no width to run the model on).
            fields = [table.schema.field(c) for c in keep] + self._outputs
            return pa.schema(fields).empty_table()
        batches = table.to_batches() or [pa.RecordBatch.from_pylist([], schema=table.schema)]
        self._calls += 1
        actor = f"Ray actor {self._actor[:12]}" if self._actor else f"pid {os.getpid()}"
        where = f"{actor} call {self._calls}"
        stats = new_stats()
        try:
            results = list(score(self.engine, batches, keep, self.output, where, label, stats))
        finally:
            self._report(where, stats)
        scored = pa.Table.from_batches(results)
        self._outputs = list(scored.schema)[len(keep) :]
        outputs = scored.column_names[len(keep) :]
        clash = [n for n in outputs if n in keep]
        if clash or len(set(outputs)) != len(outputs):
            raise ValueError(
                f"output columns {outputs} clash with each other or with kept columns {keep}; "
                "name them with output=[...] or choose the columns with keep=[...]"
            )
        return scored

    def _report(self, where: str, stats: dict[str, Any]) -> None:
        """This call's record to the records actor (and its line to the log)."""
        try:
            ray = _ray()
            fields = {"execution": _execution(), "actor": self._actor, "call": self._calls}
            record = task_record(fields, self.ref, self.engine, self.device, where, stats)
            if ray is None:
                return
            if self._records is None:
                self._records = _records_actor(ray, create=True)
            # Waited for: the record is in before the batch's outputs reach the driver.
            ray.get(self._records.add.remote(record), timeout=_RECORD_TIMEOUT_S)
        except Exception as bookkeeping:  # never in place of the call's own outcome
            logger.warning("%s: the call's record was lost: %s", where, bookkeeping)


def _table(batch: Any) -> Any:
    import pyarrow as pa

    if isinstance(batch, pa.Table):
        return batch
    if isinstance(batch, pa.RecordBatch):
        return pa.Table.from_batches([batch])
    if hasattr(batch, "__arrow_c_stream__"):
        return pa.table(batch)
    raise TypeError(
        "Predictor: expected a pyarrow.Table; pass batch_format='pyarrow' to map_batches, got "
        f"{type(batch).__name__}"
    )


def _execution() -> str | None:
    """The dataset run this call belongs to: Ray Data names each execution of a
    dataset (``DataContext.dataset_logger_id``, e.g. ``dataset_..._0``)."""
    try:
        from ray.data import DataContext

        return getattr(DataContext.get_current(), "dataset_logger_id", None)
    except Exception:
        return None


# ---------------------------------------------------------------------------
# Reports


class _Records:
    """The records of the calls of the newest dataset runs (a detached actor
    of no CPU, one per cluster)."""

    def __init__(self) -> None:
        self.runs: collections.OrderedDict[Any, list[dict[str, Any]]] = collections.OrderedDict()

    def add(self, record: dict[str, Any]) -> None:
        key = record.get("execution")
        self.runs.setdefault(key, []).append(record)
        self.runs.move_to_end(key)
        while len(self.runs) > _RUNS_KEPT:
            self.runs.popitem(last=False)

    def latest(self) -> list[dict[str, Any]]:
        """The records of the run that sent the newest one."""
        return next(reversed(self.runs.values()), [])


def _records_actor(ray: Any, create: bool) -> Any:
    if not create:
        try:
            return ray.get_actor(_RECORDS, namespace=_NAMESPACE)
        except ValueError:
            return None
    return (
        ray.remote(_Records)
        .options(
            name=_RECORDS,
            namespace=_NAMESPACE,
            lifetime="detached",
            get_if_exists=True,
            num_cpus=0,
        )
        .remote()
    )


def last_report() -> Report | None:
    """What the calls of the newest dataset run that ran a :class:`Predictor`
    reported (on the Ray cluster this driver is connected to), or None
    before any ran.

    ``tasks`` counts ``map_batches`` calls (Ray Data tasks of the actors);
    ``rows_per_s`` is rows over the span from the first call's start to the
    last call's end; latencies are per Arrow batch. ``failed``: a call raised
    (its error is in ``errors``).
    """
    ray = _ray(actor=False)
    if ray is None:
        return None
    actor = _records_actor(ray, create=False)
    if actor is None:
        return None
    records = ray.get(actor.latest.remote(), timeout=_RECORD_TIMEOUT_S)
    if not records:
        return None
    report = _summarise(sorted(records, key=lambda r: r["start"]))
    report.failed = bool(report.errors)
    return report
