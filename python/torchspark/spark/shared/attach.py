"""A task's connection to its executor's shared engine: :func:`executor_engine`."""

from __future__ import annotations

import dataclasses
import os
import pickle
import sys
from collections.abc import Mapping
from typing import Any

import torch

from ...distribute import ModelRef, fetch
from ...inputs import Inputs
from ..engine_cache import EngineCache
from ..executor import identify
from . import rendezvous
from .client import SharedEngine, open_engine
from .mode import Sharing

IDLE_S = 60.0  # an engine with no connection for this long exits (Spark's idle workers: 60 s)
_connections = EngineCache(4)


def executor_engine(
    ref: ModelRef,
    device: torch.device,
    specs: Inputs,
    options: Mapping[str, Any],
    sharing: Sharing,
) -> SharedEngine:
    """This Python worker's connection to the engine of its executor, device,
    model and input layout (started if none runs), reused across tasks; a
    new one after the engine went away."""
    if sys.platform != "linux":
        raise RuntimeError(
            f"share='executor' needs Linux executors (memfd_create, SO_PEERCRED, pidfd); this "
            f"one runs {sys.platform}: use share='task'"
        )
    key = (ref, str(device), repr(specs), repr(sorted(options.items())), sharing)

    def connect() -> SharedEngine:
        path = fetch(ref)
        info = os.stat(path)
        executor = identify()
        place = rendezvous.Place(
            rendezvous.application_directory(sharing.application),
            rendezvous.engine_key(
                executor.id,
                executor.pid,
                str(device),
                os.path.realpath(path),
                info.st_size,
                info.st_mtime_ns,
                repr(specs),
                repr(sorted(options.items())),
            ),
        )
        config = pickle.dumps(
            {
                "directory": place.directory,
                "key": place.key,
                "path": path,
                "device": str(device),
                "specs": _local(specs),
                "options": dict(options),
                "cores": sharing.cores,
                "task_cpus": sharing.task_cpus,
                "executor": executor.id,
                "jvm": executor.pid,
                "label": f"model '{ref.name}'",
                "idle_s": float(os.environ.get("TORCHSPARK_SHARED_IDLE_S", IDLE_S)),
            }
        )
        return open_engine(place, config, f"model '{ref.name}' on {device}")

    return _connections.get(key, connect)


def _local(specs: Inputs) -> Inputs:
    """``specs`` with shipped tokenizers (``SparkFiles`` names, URIs) fetched
    to local paths here: the engine process is no Spark worker and cannot
    resolve a ``SparkFiles`` name."""

    def local(spec: Any) -> Any:
        tokenizer = getattr(spec, "tokenizer", None)
        if isinstance(tokenizer, ModelRef):
            return dataclasses.replace(spec, tokenizer=fetch(tokenizer))
        return spec

    if isinstance(specs, Mapping):
        return {name: local(spec) for name, spec in specs.items()}
    if isinstance(specs, (list, tuple)):
        return [local(spec) for spec in specs]
    return local(specs)
