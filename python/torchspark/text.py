"""Text inputs: string columns tokenized with Hugging Face ``tokenizers``.

A text :class:`~torchspark.Input` names one string column (or two: the halves
of sentence pairs, for cross-encoders) and a tokenizer. Before the engine sees
an Arrow batch, :class:`Tokenize` encodes its strings with the tokenizer's
``encode_batch`` (Rust, run with the GIL released and across the tokenizer's
own threads) and hands the token ids to the engine as ragged int32 lists; the
engine pads, batches by token budget and stages them natively. In
:meth:`Engine.map` and in Spark tasks this runs while the engine's threads
compute the previous batch, so tokenizing overlaps the model.

Each thread that tokenizes has its own tokenizer instance: ``encode_batch`` on
one instance shared by threads fails with "Already borrowed".
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Sequence
from typing import Any

import numpy as np

from .distribute import ModelRef, cache_dir, fetch, private_dir
from .errors import NullValueError

__all__ = ["TOKENIZER_OUTPUTS", "Tokenize", "tokenizer_file"]

# The tokenizer outputs a model may take, by the Hugging Face argument names.
TOKENIZER_OUTPUTS = ("input_ids", "attention_mask", "token_type_ids")
# Truncation when neither the Input nor the tokenizer sets one: BERT-class
# encoders have 512 positions.
DEFAULT_MAX_LEN = 512


def _tokenizers() -> Any:
    try:
        import tokenizers
    except ImportError as e:  # pragma: no cover - the extra is installed in tests
        raise ImportError(
            "Input(kind='text') needs Hugging Face tokenizers: pip install 'torchspark[text]'"
        ) from e
    return tokenizers


def _describe_start(path: str) -> str:
    with open(path, "rb") as f:
        head = f.read(16)
    if not head:
        return "an empty file"
    shown = head.decode("ascii", errors="replace")
    shown = "".join(c if c.isprintable() else "." for c in shown)
    return f"a file of {os.path.getsize(path)} bytes starting {head.hex(' ')} ({shown!r})"


def tokenizer_file(tokenizer: Any) -> str | ModelRef:
    """The ``tokenizer.json`` file of ``tokenizer``, checked to load.

    ``tokenizer``: a path of a ``tokenizer.json``, a local model directory
    holding one, a ``tokenizers.Tokenizer`` or a ``transformers`` fast
    tokenizer (saved once into the model cache, named by its content), or a
    :class:`~torchspark.distribute.ModelRef` (already shipped; returned as is).
    """
    if isinstance(tokenizer, ModelRef):
        return tokenizer
    tokenizers = _tokenizers()
    backend = getattr(tokenizer, "backend_tokenizer", tokenizer)  # transformers' fast tokenizers
    if isinstance(backend, tokenizers.Tokenizer):
        text = backend.to_str()
        digest = hashlib.sha256(text.encode()).hexdigest()[:24]
        directory = os.path.join(cache_dir(), "tokenizers")
        private_dir(directory)
        path = os.path.join(directory, f"{digest}.tokenizer.json")
        if not os.path.isfile(path):
            tmp = f"{path}.{os.getpid()}.{threading.get_ident()}.tmp"
            with open(tmp, "w", encoding="utf-8") as f:
                f.write(text)
            os.replace(tmp, path)
        return path
    if not isinstance(tokenizer, (str, os.PathLike)):
        raise TypeError(
            "Input.tokenizer: expected a tokenizer.json path, a model directory, a "
            f"tokenizers.Tokenizer or a transformers fast tokenizer, got {type(tokenizer).__name__}"
        )
    path = os.fspath(tokenizer)
    if os.path.isdir(path):
        candidate = os.path.join(path, "tokenizer.json")
        if not os.path.isfile(candidate):
            found = sorted(os.listdir(path))[:12]
            raise FileNotFoundError(
                f"tokenizer '{path}': a directory without a tokenizer.json (it holds {found}); "
                "save a fast tokenizer there (tokenizer.save_pretrained) or pass the file"
            )
        path = candidate
    if not os.path.isfile(path):
        raise FileNotFoundError(f"tokenizer '{path}': no such file or directory")
    try:
        tokenizers.Tokenizer.from_file(path)
    except Exception as e:
        raise ValueError(
            f"tokenizer '{path}': not a Hugging Face tokenizer.json ({_describe_start(path)}): "
            f"{str(e).splitlines()[0] if str(e) else type(e).__name__}"
        ) from None
    return os.path.abspath(path)


_local = threading.local()  # per thread: {(path, max_len): (tokenizer, max_len, pad_id)}


def _pad_id(tokenizer: Any) -> int:
    """The id written past each row's tokens: the tokenizer's padding id,
    else its [PAD] / <pad> token, else 0 (masked out either way; models
    that derive positions from padding, like RoBERTa, need the real one)."""
    padding = tokenizer.padding
    if padding:
        return int(padding["pad_id"])
    for token in ("[PAD]", "<pad>", "<|pad|>", "<PAD>"):
        found = tokenizer.token_to_id(token)
        if found is not None:
            return int(found)
    return 0


def _configured(path: str, requested_max_len: int | None) -> tuple[Any, int, int]:
    """This thread's tokenizer of ``path``, truncating at max_len and never
    padding (padding is the engine's, per batch), with max_len and the pad id."""
    cache = getattr(_local, "tokenizers", None)
    if cache is None:
        cache = _local.tokenizers = {}
    key = (path, requested_max_len)
    entry = cache.get(key)
    if entry is None:
        tokenizer = _tokenizers().Tokenizer.from_file(path)
        truncation = tokenizer.truncation
        max_len = requested_max_len or (truncation["max_length"] if truncation else DEFAULT_MAX_LEN)
        pad_id = _pad_id(tokenizer)
        tokenizer.no_padding()
        tokenizer.enable_truncation(max_len)
        entry = cache[key] = (tokenizer, max_len, pad_id)
    return entry


class Tokenize:
    """One text input's tokenization: string column(s) -> ragged token ids.

    ``__call__`` takes a pyarrow RecordBatch or Table and returns the token
    ids and (with ``with_types``, else None) the token type ids as
    ``list<int32>`` arrays (one row per row), and how many rows were
    truncated at ``max_len``.
    """

    def __init__(
        self,
        tokenizer: str | ModelRef,
        columns: Sequence[str],
        max_len: int | None,
        nulls: str,
        fill: Any,
        add_special_tokens: bool,
    ) -> None:
        self.tokenizer = tokenizer
        self.columns = list(columns)
        self.requested_max_len = max_len
        self.nulls = nulls
        self.fill = fill if isinstance(fill, str) else ""
        self.add_special_tokens = add_special_tokens

    @property
    def path(self) -> str:
        return fetch(self.tokenizer) if isinstance(self.tokenizer, ModelRef) else self.tokenizer

    def pad_id(self) -> int:
        """The id the engine pads token ids with."""
        return _configured(self.path, self.requested_max_len)[2]

    def max_len(self) -> int:
        """Where rows are truncated: the Input's max_len, else the tokenizer's."""
        return _configured(self.path, self.requested_max_len)[1]

    def _strings(self, data: Any, column: str) -> list[str]:
        import pyarrow as pa
        import pyarrow.compute as pc

        names = data.schema.names
        if column not in names:
            raise ValueError(f"input column '{column}': not in the batch; its columns are {names}")
        values = data.column(column)
        kind = values.type
        if not (pa.types.is_string(kind) or pa.types.is_large_string(kind)) and not (
            pa.types.is_string_view(kind)
        ):
            raise TypeError(
                f"input column '{column}' (kind 'text'): expected string or large_string, "
                f"got {kind}"
            )
        nulls = values.null_count
        if nulls:
            if self.nulls == "error":
                valid = values.is_valid()
                valid = valid.combine_chunks() if hasattr(valid, "combine_chunks") else valid
                first = int(np.argmin(valid.to_numpy(zero_copy_only=False)))
                raise NullValueError(
                    f"column '{column}': {nulls} null {'row' if nulls == 1 else 'rows'} "
                    f"(first in row {first}); pass nulls='fill' to tokenize them as "
                    f"fill={self.fill!r}"
                )
            values = pc.fill_null(values, self.fill)
        return values.to_pylist()

    def __call__(self, data: Any, with_types: bool = True) -> tuple[Any, Any, int]:
        import pyarrow as pa

        texts = [self._strings(data, c) for c in self.columns]
        tokenizer = _configured(self.path, self.requested_max_len)[0]
        batch_input = texts[0] if len(texts) == 1 else list(zip(*texts, strict=True))
        encodings = tokenizer.encode_batch(batch_input, add_special_tokens=self.add_special_tokens)
        truncated = sum(1 for e in encodings if e.overflowing)
        ids = _ragged([e.ids for e in encodings], pa)
        # Token types only when the model takes them: another Python pass per row.
        type_ids = _ragged([e.type_ids for e in encodings], pa) if with_types else None
        return ids, type_ids, truncated


def _ragged(rows: list[list[int]], pa: Any) -> Any:
    """A list<int32> array of ``rows``, built from flat numpy buffers."""
    import itertools

    count = len(rows)
    lengths = np.fromiter(map(len, rows), dtype=np.int32, count=count)
    offsets = np.zeros(count + 1, dtype=np.int32)
    np.cumsum(lengths, out=offsets[1:])
    flat = np.fromiter(itertools.chain.from_iterable(rows), dtype=np.int32, count=int(offsets[-1]))
    return pa.ListArray.from_arrays(pa.array(offsets), pa.array(flat))
