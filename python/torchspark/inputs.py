"""How Arrow columns become a model's inputs: :class:`Input`, and the feed
that maps Inputs onto a model's arguments.

An :class:`Input` says how one model input is made from an Arrow batch (its
kind, columns and options). A text Input stands for several model inputs
(``input_ids``, ``attention_mask``, ``token_type_ids``), and a padded token
input brings its attention mask when the model asks for one: :func:`feed`
resolves the Inputs a user gave against the model's argument names into one
native input spec per argument, plus the tokenization to run first.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from . import _C
from .text import TOKENIZER_OUTPUTS, Tokenize, tokenizer_file

__all__ = ["Feed", "Input", "feed", "input_tensors"]

_KINDS = ("auto", "tensor", "gather", "pad", "text", "image")
_NULLS = ("error", "fill")


@dataclass(frozen=True)
class Input:
    """How one model input is made from an Arrow batch.

    ``kind="tensor"``: one column through :func:`torchspark.to_tensor` (zero-copy
    for numbers and uniform lists). ``kind="gather"``: several scalar columns as
    ``[rows, F]``, gathered straight into the engine's staging buffer.
    ``kind="pad"``: one ragged list column (token ids) right-padded; its lengths
    drive token-budget batching (``max_tokens``); a model with an argument
    named ``attention_mask`` gets the mask of these ids too. ``"auto"`` picks
    ``"tensor"`` for one column and ``"gather"`` for several.

    ``kind="text"``: a ``string`` column (two for sentence pairs, e.g. a
    cross-encoder's query and passage) tokenized with Hugging Face
    ``tokenizers`` (``pip install 'torchspark[text]'``). ``tokenizer``: a
    ``tokenizer.json`` path, a local model directory holding one, a
    ``tokenizers.Tokenizer`` or a ``transformers`` fast tokenizer. The model
    gets ``input_ids``, ``attention_mask`` and ``token_type_ids`` by its
    argument names, as int64 (``dtype`` to change it), padded per batch to its
    longest row. Rows longer than ``max_len`` tokens (default: the
    tokenizer's truncation, else 512) are truncated, and counted in
    ``Engine.stats()["rows_truncated"]``. Null strings are an error, or
    ``fill`` (default ``""``) with ``nulls="fill"``.

    ``kind="image"``: one column of images as ``[rows, 3, H, W]`` float32
    (``dtype``: float16, bfloat16), decoded natively in the engine's staging
    threads (JPEG with libjpeg-turbo, PNG, WebP; EXIF orientation applied;
    gray, palette, alpha and CMYK converted to RGB as Pillow's
    ``convert("RGB")`` does): a ``binary`` column of encoded files (Spark's
    ``binaryFile`` source's ``content``) or the struct column of Spark's
    ``image`` source (BGR bytes, converted). ``size``: the output (int or
    ``(h, w)``, default 224); ``resize``: None (the shorter side to the size,
    then a center crop), an int S (the shorter side to S, then a center crop:
    torchvision's ``Resize(S)`` + ``CenterCrop``) or ``"stretch"``; the
    resize is antialiased bilinear, equal to Pillow's ``BILINEAR``. Values are
    ``(x / 255 - mean) / std`` per channel (``mean``, ``std``: 3 numbers;
    default [0, 1]). ``channels_last=True`` stages the batch in that memory
    format. Images over ``max_pixels`` (default 89,478,485, Pillow's limit)
    are refused before decoding. A null row is an error, or zeros with
    ``nulls="fill"``. Bad bytes name the column, the row and what the bytes
    looked like.

    ``pack=True`` (gathered columns in :func:`torchspark.predict`, an opt-in
    encoding; elsewhere it gathers as usual): Spark packs the columns into one
    ``array`` column on the JVM side, cast to ``dtype`` (float32 by default)
    with nulls filled there when
    ``nulls="fill"``, and that one column crosses to Python instead of F
    separate ones: measured 1.6x cheaper for 64 float columns. The model sees
    the same ``[rows, F]`` values.

    >>> from torchspark import Input
    >>> Input(["age", "amount"]).resolved_kind
    'gather'
    """

    columns: str | Sequence[str]
    kind: str = "auto"
    dtype: torch.dtype | None = None
    nulls: str = "error"
    fill: float | int | bool | str = 0
    max_len: int | None = None
    pad_value: int | float = 0
    pack: bool = False
    tokenizer: Any = None
    add_special_tokens: bool = True
    size: int | tuple[int, int] | None = None
    resize: int | str | None = None
    mean: Sequence[float] | None = None
    std: Sequence[float] | None = None
    channels_last: bool = False
    max_pixels: int | None = None

    def __post_init__(self) -> None:
        if self.kind not in _KINDS:
            raise ValueError(f"Input.kind: expected one of {_KINDS}, got {self.kind!r}")
        if self.nulls not in _NULLS:
            raise ValueError(f"Input.nulls: expected one of {_NULLS}, got {self.nulls!r}")
        names = self.column_list
        if not names or not all(isinstance(c, str) for c in names):
            raise TypeError(f"Input.columns: expected column names, got {self.columns!r}")
        kind = self.resolved_kind
        if kind in ("tensor", "pad", "image") and len(names) != 1:
            raise ValueError(f"Input(kind={kind!r}) takes exactly one column, got {names}")
        if kind == "text" and len(names) not in (1, 2):
            raise ValueError(
                "Input(kind='text') takes one string column, or two for sentence pairs, "
                f"got {names}"
            )
        if self.max_len is not None and self.max_len < (1 if kind == "text" else 0):
            raise ValueError(f"Input.max_len must be >= {int(kind == 'text')}, got {self.max_len}")
        if self.pack and kind != "gather":
            raise ValueError(
                f"Input({names}).pack: expected gathered scalar columns (kind 'gather'), "
                f"got kind '{kind}'"
            )
        if kind == "text":
            if self.tokenizer is None:
                raise ValueError(
                    f"Input({names}, kind='text'): expected tokenizer= (a tokenizer.json, a "
                    "model directory or a tokenizers.Tokenizer)"
                )
            if self.dtype is not None and (
                self.dtype.is_floating_point or self.dtype == torch.bool
            ):
                raise ValueError(
                    f"Input(kind='text').dtype: expected an integer dtype, got {self.dtype}"
                )
            # A path (or a shipped reference) from here on: hashable, and
            # its repr names the file rather than a tokenizer's contents.
            object.__setattr__(self, "tokenizer", tokenizer_file(self.tokenizer))
        elif self.tokenizer is not None:
            raise ValueError(
                f"Input.tokenizer: only kind 'text' takes a tokenizer, got kind '{kind}'"
            )
        image_options = [n for n in _IMAGE_OPTIONS if getattr(self, n) != _OPTION_DEFAULTS[n]]
        if image_options and kind != "image":
            raise ValueError(
                f"Input{tuple(image_options)}: only kind 'image' takes these, got kind '{kind}'"
            )
        for name in ("size", "mean", "std"):
            value = getattr(self, name)
            if isinstance(value, (tuple, list)):
                object.__setattr__(self, name, tuple(value))  # hashable, one repr

    @property
    def column_list(self) -> list[str]:
        return [self.columns] if isinstance(self.columns, str) else list(self.columns)

    @property
    def resolved_kind(self) -> str:
        if self.kind != "auto":
            return self.kind
        return "tensor" if len(self.column_list) == 1 else "gather"

    def _native(self) -> dict[str, Any]:
        """The spec the engine's registry of input kinds takes: the kind, its
        columns, and the options set away from their defaults (a kind refuses
        options it does not know, naming those it does)."""
        options = {
            name: getattr(self, name)
            for name, default in _OPTION_DEFAULTS.items()
            if getattr(self, name) != default
        }
        return {"kind": self.resolved_kind, "columns": self.column_list, "options": options}


# The options an Input passes to its (native) kind, and their defaults (not passed).
_OPTION_DEFAULTS: dict[str, Any] = {
    "dtype": None,
    "nulls": "error",
    "fill": 0,
    "max_len": None,
    "pad_value": 0,
    "size": None,
    "resize": None,
    "mean": None,
    "std": None,
    "channels_last": False,
    "max_pixels": None,
}
_IMAGE_OPTIONS = ("size", "resize", "mean", "std", "channels_last", "max_pixels")

Inputs = Input | Sequence[Input] | Mapping[str, Input]


@dataclass(frozen=True)
class _Text:
    """A text Input's tokenization and the batch columns it adds."""

    tokenize: Tokenize
    ids: str  # the added column of token ids
    type_ids: str  # and of token type ids
    group: str  # the length group of its padded inputs
    with_types: bool = True  # whether a model argument takes the token types


@dataclass
class Feed:
    """The model's inputs, one native spec per argument, and the tokenization
    to run on an Arrow batch before the engine takes it (:meth:`prepare`)."""

    specs: list[dict[str, Any]]
    texts: list[_Text] = field(default_factory=list)
    padded: bool = False  # whether any input is padded (token budgets apply)

    def prepare(self, batch: Any) -> tuple[Any, int]:
        """``batch`` with the token columns of the text inputs added (zero-copy
        for its own columns), and the rows truncated. Without text inputs,
        ``batch`` as it is."""
        if not self.texts:
            return batch, 0
        import pyarrow as pa

        data = _pyarrow(batch)
        names = list(data.schema.names)
        columns = list(data.columns)
        truncated = 0
        for text in self.texts:
            ids, type_ids, cut = text.tokenize(data, text.with_types)
            truncated += cut
            names.append(text.ids)
            columns.append(ids)
            if text.with_types:
                names.append(text.type_ids)
                columns.append(type_ids)
        if isinstance(data, pa.Table):
            columns = [
                c if isinstance(c, pa.ChunkedArray) else pa.chunked_array([c]) for c in columns
            ]
            return pa.Table.from_arrays(columns, names=names), truncated
        return pa.RecordBatch.from_arrays(columns, names=names), truncated


def _pyarrow(batch: Any) -> Any:
    import pyarrow as pa

    if isinstance(batch, (pa.RecordBatch, pa.Table)):
        return batch
    if hasattr(batch, "__arrow_c_array__"):
        return pa.record_batch(batch)
    return pa.table(batch)


def feed(inputs: Inputs, arguments: Sequence[str], label: str) -> Feed:
    """Resolve ``inputs`` against the model's ``arguments`` (its parameter
    names; empty when the model does not record them).

    ``inputs``: one Input, a list (positional), or a dict by argument name.
    Arguments named ``attention_mask`` / ``token_type_ids`` that no Input
    feeds come from the text input (or, for the mask, the padded token input)
    that feeds the others. ValueError for arguments left without an input,
    inputs naming no argument, or more inputs than arguments.
    """
    arguments = list(arguments)
    if isinstance(inputs, Input):
        given: list[Input] | None = [inputs]
        by_name: dict[str, Input] | None = None
    elif isinstance(inputs, Mapping):
        by_name = dict(inputs)
        given = None
        if not by_name or not all(isinstance(v, Input) for v in by_name.values()):
            raise TypeError(
                f"inputs: expected a dict of torchspark.Input by argument name, got {inputs!r}"
            )
    else:
        given = list(inputs)
        by_name = None
        if not given or not all(isinstance(i, Input) for i in given):
            raise TypeError(f"inputs: expected torchspark.Input objects, got {inputs!r}")

    builder = _Builder()
    if not arguments:
        if by_name is not None:
            raise ValueError(
                f"{label}: inputs given by name {list(by_name)}, but the model does not record "
                "its argument names; pass inputs as a list in argument order"
            )
        # Positional, names unknown: a text input is (input_ids, attention_mask).
        for item in given or []:
            if item.resolved_kind == "text":
                builder.add(item, "input_ids")
                builder.add(item, "attention_mask")
            else:
                builder.add(item, None)
        return builder.feed()

    if by_name is not None:
        unexpected = [n for n in by_name if n not in arguments]
        assigned = {a: by_name[a] for a in arguments if a in by_name}
    else:
        assert given is not None
        texts = [i for i in given if i.resolved_kind == "text"]
        if len(given) == 1 and texts and set(arguments) <= set(TOKENIZER_OUTPUTS):
            assigned = {a: given[0] for a in arguments}  # one text feeds every tokenizer output
        elif len(given) > len(arguments):
            raise ValueError(
                f"{label}: {len(given)} inputs for a model of {len(arguments)} arguments "
                f"{arguments}"
            )
        else:
            assigned = dict(zip(arguments, given, strict=False))
        unexpected = []
    # What feeds the arguments no Input was given for: the text input, else
    # the padded ids (for an attention mask).
    values = list(assigned.values())
    text = next((i for i in values if i.resolved_kind == "text"), None)
    pads = [i for i in values if i.resolved_kind == "pad"]
    ids = assigned.get("input_ids")
    pad = ids if ids is not None and ids.resolved_kind == "pad" else (pads[0] if pads else None)
    missing = []
    for argument in arguments:
        item = assigned.get(argument)
        if item is not None:
            output = None
            if item.resolved_kind == "text":
                output = argument if argument in TOKENIZER_OUTPUTS else "input_ids"
            builder.add(item, output)
        elif argument == "attention_mask" and (text is not None or pad is not None):
            if text is not None:
                builder.add(text, "attention_mask")
            else:
                builder.add(pad, "attention_mask")
        elif argument == "token_type_ids" and text is not None:
            builder.add(text, "token_type_ids")
        else:
            missing.append(argument)
    if missing or unexpected:
        raise ValueError(
            f"{label}: inputs must feed the model's arguments {arguments}; missing {missing}, "
            f"unexpected {unexpected} (attention_mask and token_type_ids come from a text "
            "input, and an attention_mask from padded ids, when not given)"
        )
    return builder.feed()


class _Builder:
    """Native specs in argument order, one tokenization per text Input."""

    def __init__(self) -> None:
        self.specs: list[dict[str, Any]] = []
        self.texts: dict[int, _Text] = {}
        self.padded = False

    def _text(self, item: Input) -> _Text:
        text = self.texts.get(id(item))
        if text is None:
            n = len(self.texts)
            tokenize = Tokenize(
                item.tokenizer,
                item.column_list,
                item.max_len,
                item.nulls,
                item.fill,
                item.add_special_tokens,
            )
            group = "text " + "+".join(item.column_list)
            text = _Text(
                tokenize, f"__torchspark_text{n}_ids", f"__torchspark_text{n}_types", group
            )
            self.texts[id(item)] = text
        return text

    def add(self, item: Input, output: str | None) -> None:
        dtype = item.dtype or torch.int64
        kind = item.resolved_kind
        if kind == "text":
            self.padded = True
            text = self._text(item)
            options: dict[str, Any] = {"dtype": dtype, "length_group": text.group}
            if output == "attention_mask":
                self.specs.append({"kind": "mask", "columns": [text.ids], "options": options})
            elif output == "token_type_ids":
                self.specs.append({"kind": "pad", "columns": [text.type_ids], "options": options})
            else:
                options["pad_value"] = text.tokenize.pad_id()
                self.specs.append({"kind": "pad", "columns": [text.ids], "options": options})
        elif output == "attention_mask":
            # The mask of padded ids: same lengths (nulls, max_len) as the ids.
            options = {"dtype": torch.int64}
            for name in ("nulls", "max_len"):
                if getattr(item, name) != _OPTION_DEFAULTS[name]:
                    options[name] = getattr(item, name)
            self.specs.append({"kind": "mask", "columns": item.column_list, "options": options})
            self.padded = True
        else:
            self.padded = self.padded or kind == "pad"
            self.specs.append(item._native())

    def feed(self) -> Feed:
        used = {c for spec in self.specs for c in spec["columns"]}
        texts = [
            dataclasses.replace(text, with_types=text.type_ids in used)
            for text in self.texts.values()
        ]
        return Feed(self.specs, texts, self.padded)


def input_tensors(batch: Any, inputs: Inputs, arguments: Sequence[str] = ()) -> list[torch.Tensor]:
    """The tensors ``inputs`` make of an Arrow ``batch``, one per model
    argument (``arguments``: the model's parameter names, for text inputs and
    attention masks), as the engine converts them (padded inputs at the
    batch's longest row)."""
    resolved = feed(inputs, arguments, "input_tensors")
    prepared, _ = resolved.prepare(batch)
    return _C.input_tensors(prepared, resolved.specs)
