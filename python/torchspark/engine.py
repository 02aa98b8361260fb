"""The batched engine: run a TorchScript or AOTInductor model over a stream of inputs.

The engine is native: batching, staging, the model call and the splitting of
outputs back to each submission all run in C++ threads with the GIL released;
Python only submits and collects.
"""

from __future__ import annotations

import atexit
import collections
import os
import threading
import weakref
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

import torch

from . import _C
from .distribute import sha256_file
from .export import check_module, export_cached
from .inputs import Feed, Input, Inputs, feed, input_tensors

__all__ = ["Engine", "Future", "Input", "input_tensors"]

_PRECISIONS = ("fp32", "bf16", "fp16")


def _is_arrow(obj: Any) -> bool:
    return hasattr(obj, "__arrow_c_array__") or hasattr(obj, "__arrow_c_stream__")


def _resolve_device(device: str | torch.device) -> torch.device:
    if isinstance(device, str) and device == "auto":
        if torch.accelerator.is_available() and torch.accelerator.device_count() > 0:
            accelerator = torch.accelerator.current_accelerator()
            return torch.device(accelerator.type, torch.accelerator.current_device_index())
        return torch.device("cpu")
    return torch.device(device)


def check_argument_names(given: Sequence[str], arguments: Sequence[str], label: str) -> None:
    """Raise ValueError unless inputs given by name are exactly the model's arguments."""
    missing = [a for a in arguments if a not in given]
    extra = [n for n in given if n not in arguments]
    if missing or extra:
        raise ValueError(
            f"{label}: inputs by name must match the model's arguments {list(arguments)}; "
            f"missing {missing}, unexpected {extra}"
        )


class Future:
    """The outputs of one submission, once the engine has them.

    ``result()`` mirrors the model's return: a tensor, a tuple of tensors, or a
    dict of named tensors, with one row per submitted row in submission order.
    """

    __slots__ = ("_engine", "_outputs", "_request")

    def __init__(self, request: Any, engine: Engine) -> None:
        self._request = request
        self._engine = engine
        self._outputs: tuple[list[str], list[torch.Tensor]] | None = None

    @property
    def rows(self) -> int:
        return self._request.rows

    def done(self) -> bool:
        return self._request.done()

    def wait(self, timeout: float | None = None) -> bool:
        """Wait up to ``timeout`` seconds (None: until done); return whether it is done."""
        return self._request.wait(-1.0 if timeout is None else float(timeout))

    def result(self, timeout: float | None = None) -> Any:
        """The outputs; raises :class:`torchspark.ModelError` if its batch failed,
        ``TimeoutError`` if not done within ``timeout`` seconds."""
        if timeout is not None and not self.wait(timeout):
            raise TimeoutError(f"request {self._request.id} not done after {timeout} s")
        if self._outputs is None:
            try:
                self._outputs = self._request.result()
            except Exception as e:
                # Which of the batch's requests this is: its rows are named by it.
                e.torchspark_request = self._request.id
                raise
            finally:
                self._engine._collect()
        return unpack(self._outputs)


class _Failed:
    """A submission that failed before it reached the engine (``Engine.map``)."""

    __slots__ = ("error",)
    rows = 0

    def __init__(self, error: Exception) -> None:
        self.error = error

    def result(self) -> Any:
        raise self.error


def _outcome(done: Future | _Failed, return_exceptions: bool) -> Any:
    """``done``'s outputs; its exception instead of raising it, with ``return_exceptions``."""
    if not return_exceptions:
        return done.result()
    try:
        return done.result()
    except Exception as e:
        return e


def windowed(
    submit: Callable[[Any], Any],
    iterable: Iterable[Any],
    window: int,
    return_exceptions: bool,
    flush: Callable[[], None] | None = None,
) -> Iterator[Any]:
    """What :meth:`Engine.map` does with any ``submit`` (item -> a future with
    ``rows`` and ``result()``): keeps about ``window`` rows submitted ahead of
    the caller, yields outcomes in order (see :func:`_outcome`), ``flush``
    once the items run out."""
    pending: collections.deque[Any] = collections.deque()
    pending_rows = 0
    for item in iterable:
        try:
            future = submit(item)
        except Exception as e:
            if not return_exceptions:
                raise
            future = _Failed(e)
        pending.append(future)
        pending_rows += future.rows
        while pending and pending_rows - pending[0].rows >= window:
            done = pending.popleft()
            pending_rows -= done.rows
            yield _outcome(done, return_exceptions)
    if flush is not None:
        flush()
    while pending:
        yield _outcome(pending.popleft(), return_exceptions)


def unpack(outputs: tuple[list[str], list[torch.Tensor]]) -> Any:
    """The model's return shape: a tensor, a tuple of tensors or a dict of them."""
    names, tensors = outputs
    if any(names):
        return dict(zip(names, tensors, strict=True))
    return tensors[0] if len(tensors) == 1 else tuple(tensors)


def _per_token(
    per_token: bool | Sequence[int | str], inputs: Feed | None
) -> tuple[bool, list[int], list[str]]:
    """``Engine(per_token=...)`` as (all, indices, names), checked."""
    if isinstance(per_token, (str, int)) and not isinstance(per_token, bool):
        per_token = [per_token]
    if per_token is False or (not isinstance(per_token, bool) and not list(per_token)):
        return False, [], []
    if inputs is None or not inputs.padded:
        raise ValueError(
            "per_token: expected a padded token input (inputs=[Input(column, kind='pad')] or "
            f"kind='text'), got inputs={inputs.specs if inputs else None!r}"
        )
    if per_token is True:
        return True, [], []
    items = list(per_token)
    if not all(isinstance(i, (str, int)) and not isinstance(i, bool) for i in items):
        raise TypeError(f"per_token: expected True or output indices / names, got {per_token!r}")
    return (
        False,
        [i for i in items if isinstance(i, int)],
        [i for i in items if isinstance(i, str)],
    )


def usable_cores() -> int:
    """Cores this process may run on (its CPU affinity), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def size_intra_op_threads(
    workers: int, requested: int | None = None, cores: int | None = None
) -> int:
    """Apply the thread rule of :class:`Engine`; return torch's intra-op pool size.

    ``requested`` sets the pool outright; otherwise it shrinks (never grows) to
    ``cores // workers`` so that ``workers * pool <= cores``.
    """
    cores = usable_cores() if cores is None else max(1, cores)
    target = (
        requested
        if requested is not None
        else min(torch.get_num_threads(), max(1, cores // workers))
    )
    if target != torch.get_num_threads():
        torch.set_num_threads(target)
    return target


def _model_path(model: Any, example: Any) -> str:
    """The file of ``model``: a path as it is, a module exported with ``example``."""
    if isinstance(model, (str, os.PathLike)):
        return os.fspath(model)
    check_module(model, "Engine")
    if example is None:
        raise TypeError(
            f"Engine: a {type(model).__name__} module needs example= (its inputs for a few "
            "rows) to be exported; or pass the path of a model from torchspark.export"
        )
    return export_cached(model, example)


_live: weakref.WeakSet[Engine] = weakref.WeakSet()
_live_lock = threading.Lock()


@atexit.register
def _close_all() -> None:
    # Join the native threads before the interpreter goes away.
    with _live_lock:
        engines = list(_live)
    for engine in engines:
        engine.close(drain=False)


class Engine:
    """Runs a TorchScript or AOTInductor model over a stream of batches.

    Small submissions are coalesced into batches of up to ``batch_size`` rows
    (waiting at most ``max_delay_ms`` for more), large ones are split; each
    submission gets its own outputs back, in order, exactly once per row. A
    model error fails only its batch; out of memory splits the batch in
    halves and retries. ``inflight`` batches are staged or computing at once,
    so staging overlaps compute.

    Padded inputs (text, ``kind="pad"``) are batched by a token budget: a
    batch holds at most ``max_tokens`` padded token slots (rows x its longest
    row; a text's ids, mask and token types count once), and each submission
    is sorted by length (``sort_window``) so that rows of similar lengths
    share batches (outputs keep the submission order). By default
    (``max_tokens="auto"``) the engine picks the budget itself: it compares
    budgets on the live stream, two at a time, batch by batch (starting at
    1024 tokens, doubling while that is faster, else halving, up to 16384 on
    a CPU and 65536 on an accelerator, lowered on out-of-memory) and keeps
    the one with the most real tokens per second; ``stats()["token_budget"]``
    says which. Measured on all-MiniLM-L6-v2 (CPU): 512-2048 tokens ran at
    the same speed, 16384 at 60% of it, no budget (each Arrow batch padded
    to its longest row) at 11%. Set ``max_tokens`` to an int to fix it (a
    model compiled for a fixed token count, a known-good value), or None for
    ``batch_size`` rows per batch.

    Cheap work runs inline. Handing a batch to a worker thread and back costs
    microseconds of wake-ups; for a model whose calls average under
    ``inline_below_ms``, :meth:`run` calls it on the caller's thread instead
    (GIL released) when the engine is idle and the inputs are ready tensors
    of at most ``batch_size`` rows. ``stats()["inline_batches"]`` counts
    them. Outputs that are the model's inputs (an identity model) come back
    as those tensors, as in eager PyTorch; never as the engine's reused
    staging buffers.

    Model files are code: load only files you trust. ``sha256`` checks the
    file's digest before it is parsed.

    Threads on the CPU. The rule: ``threads`` worker threads, each running
    model calls with torch's intra-op pool, so ``threads * intra_op_threads``
    must not exceed the cores this process may use (``os.sched_getaffinity``),
    or they fight over them. By default there is one worker and torch's pool
    keeps its size; with more workers the pool shrinks to ``cores // threads``
    (never grows). Staging (gathers, pads) runs on one more thread, overlapped
    with compute. ``intra_op_threads`` sets the pool explicitly. The pool is
    process-wide (``torch.set_num_threads``): the Spark layer sizes it from
    ``spark.task.cpus``.

    Args:
        model: path of a TorchScript archive (``torch.jit.save``) or an
            AOTInductor package (``.pt2``), e.g. from :func:`torchspark.export`;
            or an ``nn.Module`` with ``example``: exported (TorchScript,
            verified against the module) into the model cache once per content.
        example: a module's example inputs (a tensor or a tuple of tensors with
            a batch dimension), for its export.
        device: ``"auto"`` (the accelerator if one has a device, else CPU), or a
            torch device.
        batch_size: most rows per model call.
        max_tokens: token budget per batch with padded inputs (text,
            ``kind="pad"``): rows x the sum of the padded inputs' widths (a
            length group once: a text's ids, mask and types; several texts
            are allowed); ``"auto"`` (default): tuned while running; None: no
            budget.
        max_delay_ms: how long a partial batch waits for more rows.
        precision: ``"fp32"``, ``"bf16"`` or ``"fp16"`` (autocast; TorchScript only:
            AOTInductor bakes precision in at export, and an AOTInductor model
            with another precision here is a ValueError).
        threads: worker threads calling the model (default 1 on CPU, 2 otherwise).
        intra_op_threads: torch's intra-op pool size to set (default: sized by
            the rule above).
        inflight: batches staged or computing at once (>= 2 overlaps them).
        static_batch: pad every batch to ``batch_size`` rows.
        sort_window: with padded inputs, sort rows by total length within
            windows of this many rows; None (default): each submission whole;
            0: no sorting.
        inputs: how Arrow batches feed the model: one :class:`Input`, a list
            (one per model argument, in order) or a dict by argument name. A
            text Input feeds ``input_ids``, ``attention_mask`` and
            ``token_type_ids`` by the model's argument names; padded ids
            bring their ``attention_mask`` when the model takes one.
        inline_below_ms: :meth:`run` calls the model on the caller's thread
            while its calls average under this many milliseconds (0: never).
        per_token: outputs that are per token of the (first) padded input (``[rows, L,
            ...]`` with ``L`` the batch's padded width, e.g. token-classification
            logits): ``True`` for every output, or their indices or names. Each
            comes back ``[rows, W, ...]``, ``W`` the submission's own padded width,
            with 0 at and past each row's length, the same whatever the batching
            (``max_tokens`` batches are cut to their longest row).
        sha256: expected hex digest of the model file.

    >>> import torch, torchspark, tempfile, os
    >>> path = os.path.join(tempfile.mkdtemp(), "double.pt")
    >>> _ = torchspark.export(torch.nn.Linear(2, 1, bias=False), (torch.ones(4, 2),), path)
    >>> with torchspark.Engine(path, batch_size=8) as ex:
    ...     ex.run(torch.ones(3, 2)).shape
    torch.Size([3, 1])
    """

    def __init__(
        self,
        model: str | os.PathLike[str] | torch.nn.Module,
        *,
        example: Any = None,
        device: str | torch.device = "auto",
        batch_size: int = 4096,
        max_tokens: int | str | None = "auto",
        max_delay_ms: float = 2.0,
        precision: str = "fp32",
        threads: int | None = None,
        intra_op_threads: int | None = None,
        inflight: int = 2,
        static_batch: bool = False,
        sort_window: int | None = None,
        inputs: Inputs | None = None,
        per_token: bool | Sequence[int | str] = False,
        sha256: str | None = None,
        inline_below_ms: float = 1.0,
        _model: Any = None,
    ) -> None:
        path = _model_path(model, example)
        # What sibling() builds another engine over the same loaded model from.
        self._arguments = {
            "batch_size": batch_size,
            "max_tokens": max_tokens,
            "max_delay_ms": max_delay_ms,
            "precision": precision,
            "threads": threads,
            "intra_op_threads": intra_op_threads,
            "inflight": inflight,
            "static_batch": static_batch,
            "sort_window": sort_window,
            "inputs": inputs,
            "per_token": per_token,
            "inline_below_ms": inline_below_ms,
        }
        self.path = path
        if max_tokens == "auto":
            native_max_tokens = -1
        elif max_tokens is None:
            native_max_tokens = 0
        elif isinstance(max_tokens, int) and not isinstance(max_tokens, bool) and max_tokens >= 1:
            native_max_tokens = max_tokens
        else:
            raise ValueError(f"max_tokens must be 'auto', an int >= 1 or None, got {max_tokens!r}")
        if not os.path.isfile(path):
            raise FileNotFoundError(f"model '{path}': no such file")
        if sha256 is not None:
            actual = sha256_file(path)
            if actual != sha256.lower():
                raise ValueError(f"model '{path}': sha256 is {actual}, expected {sha256}")

        self.device = _resolve_device(device)
        if threads is None:
            threads = 1 if self.device.type == "cpu" else 2
        if not isinstance(threads, int) or threads < 1:
            raise ValueError(f"threads must be an int >= 1, got {threads!r}")
        if intra_op_threads is not None and (
            not isinstance(intra_op_threads, int) or intra_op_threads < 1
        ):
            raise ValueError(f"intra_op_threads must be an int >= 1, got {intra_op_threads!r}")
        self.threads = threads
        if self.device.type == "cpu":
            size_intra_op_threads(threads, intra_op_threads)
        self.batch_size = batch_size
        self.inflight = inflight
        self.inputs = inputs
        # _model: the same file already loaded for this device (the Spark driver's probe).
        self.model = _model if _model is not None else _C.load_model(path, self.device, threads)
        self._feed = (
            None if inputs is None else feed(inputs, list(self.model.input_names), repr(self.model))
        )
        token_all, token_indices, token_names = _per_token(per_token, self._feed)
        self._truncated = 0
        options = _C.EngineOptions(
            device=self.device,
            batch_size=batch_size,
            max_tokens=native_max_tokens,
            max_delay_ms=float(max_delay_ms),
            precision=precision,
            threads=threads,
            inflight=inflight,
            static_batch=bool(static_batch),
            sort_window=-1 if sort_window is None else sort_window,
            per_token_all=token_all,
            per_token_indices=token_indices,
            per_token_names=token_names,
            inline_below_ms=float(inline_below_ms),
        )
        self._native = _C.Engine(
            self.model, options, None if self._feed is None else self._feed.specs
        )
        with _live_lock:
            _live.add(self)

    # -- submitting --

    def submit(self, inputs: Any) -> Future:
        """Queue one submission and return its :class:`Future` at once.

        ``inputs``: a tensor, a tuple/list of tensors (positional model inputs),
        a dict of tensors (by the model's argument names), or an Arrow batch
        when the engine was built with ``inputs=[Input(...), ...]``.
        """
        return Future(self._send(inputs, try_inline=False), self)

    def run(self, inputs: Any) -> Any:
        """Submit and wait: the outputs of ``inputs``.

        When the engine is idle, ``inputs`` are tensors of at most ``batch_size``
        rows and the model's calls are cheap (under ``inline_below_ms``), the
        call runs on this thread (GIL released), without the engine's thread
        hand-offs.
        """
        sent = self._send(inputs, try_inline=True)
        if isinstance(sent, tuple):
            return unpack(sent)
        self._native.flush()
        return Future(sent, self).result()

    def map(self, iterable: Iterable[Any], *, return_exceptions: bool = False) -> Iterator[Any]:
        """Outputs of each item of ``iterable``, in order.

        Keeps about ``inflight * batch_size`` rows in the engine while the caller
        produces the next item, so producing, staging and compute overlap.
        Closing the generator early is safe: pending work finishes and is dropped.
        With ``return_exceptions``, an item whose submission or batch failed
        yields its exception (an ``Exception``) in its place and the map goes
        on; otherwise the first failure is raised.
        """
        yield from windowed(
            self.submit,
            iterable,
            self.inflight * self.batch_size,
            return_exceptions,
            self._native.flush,
        )

    @property
    def intra_op_threads(self) -> int:
        """torch's intra-op pool, which each of the ``threads`` workers' model
        calls use on the CPU (process-wide: ``torch.get_num_threads()``)."""
        return torch.get_num_threads()

    def sibling(self, **overrides: Any) -> Engine:
        """Another engine over the same loaded model (no second load, no copy
        of the weights), with this one's options but ``overrides``: its own
        queue and threads, so that its batches never mix rows with this
        engine's. Close it when done.

        >>> import torch, torchspark, tempfile, os
        >>> path = os.path.join(tempfile.mkdtemp(), "linear.pt")
        >>> _ = torchspark.export(torch.nn.Linear(2, 1), (torch.ones(4, 2),), path)
        >>> with torchspark.Engine(path, batch_size=8) as ex:
        ...     with ex.sibling(max_delay_ms=0.0) as alone:
        ...         alone.run(torch.ones(3, 2)).shape
        torch.Size([3, 1])
        """
        arguments = {**self._arguments, **overrides}
        return Engine(self.path, device=self.device, _model=self.model, **arguments)

    def _send(self, inputs: Any, *, try_inline: bool) -> Any:
        """Run ``inputs`` inline when ``try_inline`` and the engine takes them,
        returning (names, tensors); else queue them, returning the native request."""
        if isinstance(inputs, torch.Tensor):
            return self._native.run_tensors([inputs], try_inline)
        if _is_arrow(inputs):
            if self._feed is not None and self._feed.texts:
                inputs, truncated = self._feed.prepare(inputs)  # tokenized, GIL released
                self._truncated += truncated
            return self._native.run_arrow(inputs, try_inline)
        return self._native.run_tensors(self._positional(inputs), try_inline)

    def _positional(self, inputs: Any) -> list[torch.Tensor]:
        if isinstance(inputs, torch.Tensor):
            return [inputs]
        if isinstance(inputs, Mapping):
            names = list(self.model.input_names)
            if names:
                check_argument_names(list(inputs), names, repr(self.model))
                return [inputs[n] for n in names]
            return list(inputs.values())
        if isinstance(inputs, (tuple, list)) and all(isinstance(t, torch.Tensor) for t in inputs):
            return list(inputs)
        raise TypeError(
            "Engine.submit: expected a tensor, a tuple/list/dict of tensors or an Arrow "
            f"batch, got {type(inputs).__name__}"
        )

    # -- the rest --

    def stats(self) -> dict[str, Any]:
        """Rows, batches, mean batch rows, padding ratio, errors, retries, the
        token budget (``token_budget``, whether it is still being tuned, and
        the comparisons made), text rows truncated at ``max_len``
        (``rows_truncated``), and latency summaries (count, mean, p50/p90/p99,
        max in ms) of queue wait, staging, compute and end to end."""
        stats = self._native.stats()
        stats["rows_truncated"] = self._truncated
        return stats

    def histograms(self) -> dict[str, dict[str, Any]]:
        """Every sample since the engine started, in fixed buckets (cheap: no
        sorting, unlike :meth:`stats`): ``queue``, ``stage``, ``compute``,
        ``end_to_end`` (seconds) and ``batch_rows`` (rows per model call), each
        ``{"bounds": [...], "counts": [...], "sum": float}`` with one count per
        bound (values up to it, above the previous one) and a last one above
        every bound. Counts only grow: take deltas between two calls."""
        return self._native.histograms()

    def flush(self) -> None:
        """Run what is queued now instead of waiting for ``max_delay_ms``."""
        self._native.flush()

    def close(self, drain: bool = True) -> None:
        """Stop: with ``drain``, finish queued work first; else fail it with
        :class:`torchspark.EngineClosedError`. Idempotent."""
        self._native.close(drain)
        with _live_lock:
            _live.discard(self)

    @property
    def closed(self) -> bool:
        return self._native.closed

    @property
    def padded(self) -> bool:
        """Whether an input is padded (text, ``kind="pad"``): batches follow a token budget."""
        return self._feed is not None and self._feed.padded

    def _collect(self) -> None:
        self._native.collect_garbage()

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close(drain=exc[0] is None)

    def __repr__(self) -> str:
        return f"<torchspark.Engine {self.model!r} on {self.device}>"
