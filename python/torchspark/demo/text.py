"""The text task: sentence embeddings with a BERT-class encoder over sentences of skewed lengths.

``python -m torchspark.demo --task text`` (part of the default run). Nothing is
downloaded; everything is made here from fixed seeds:

1. sentences of 3-250 words from a fixed made-up vocabulary (Zipf-distributed
   word frequencies), lengths lognormal: most are short, a long tail is not
   (the shape of real text columns, and what makes padding expensive); written
   to Parquet as ``id, text``;
2. a WordPiece tokenizer trained on a separate corpus from the same generator
   with Hugging Face ``tokenizers`` (BERT normalizer and pre-tokenizer,
   ``[CLS] ... [SEP]`` with token type ids, ~8k vocabulary), saved as
   ``tokenizer.json``;
3. a BERT encoder with random weights built with ``transformers``
   (``--text-model``: ``small``, or ``minilm``: all-MiniLM-L6-v2's shape),
   wrapped to return mask-weighted mean-pooled embeddings, exported to
   TorchScript with ``torchspark.export`` and checked against the eager module
   at several sequence lengths and batch sizes, with padded attention masks
   (a trace can bake in the example's shapes; :func:`check_export`);
4. ``torchspark.predict`` with a text input (the engine tokenizes, sorts rows
   by token length and batches them by a token budget), then Spark's
   ``predict_batch_udf`` with the tokenizer called in its predict function,
   each batch padded to its longest row, as users write it;
5. every prediction of both checked against an eager reference in this
   process: the same tokenizer and module, rows grouped by token length so
   that no batch holds any padding (:func:`reference_embeddings`).
"""

from __future__ import annotations

import argparse
import os
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

import torchspark

from ._common import TaskResult, check_vectors, step, stopwatch

__all__ = [
    "DEFAULT_ROWS",
    "ENCODERS",
    "MAX_LEN",
    "PBU_BATCH",
    "TOLERANCE",
    "EncoderSize",
    "TextEncoder",
    "build_encoder",
    "check_export",
    "encode",
    "export_encoder",
    "load_encoder",
    "load_tokenizer",
    "make_sentences",
    "make_vocabulary",
    "padding_share",
    "predict_fn_factory",
    "random_batch",
    "reference_embeddings",
    "run",
    "sentence_lengths",
    "torch_threads",
    "trace_encoder",
    "train_tokenizer",
    "write_sentences",
]

DEFAULT_ROWS = 20_000
MAX_LEN = 256  # tokens per row, [CLS] and [SEP] included (all-MiniLM-L6-v2's max_seq_length)
MIN_WORDS, MAX_WORDS = 3, 250
MEDIAN_WORDS, SIGMA = 16, 0.8  # lognormal sentence lengths: mean ~22, p99 ~100 words
VOCAB_SIZE = 8000  # WordPiece vocabulary (tokens) the tokenizer is trained to
WORDS = 20_000  # made-up words in the sentences' vocabulary: more than VOCAB_SIZE, so
# rare words split into word pieces as real text does
SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]  # [PAD] gets id 0
PBU_BATCH = 64  # predict_batch_udf's rows per model call (a common choice for encoders)
TOLERANCE = 1e-4  # max |difference| from the reference, per embedding value (float32)


@dataclass(frozen=True)
class EncoderSize:
    layers: int
    hidden: int
    heads: int
    intermediate: int


ENCODERS = {
    # The demo's default: small enough that the task takes a minute or two on 2 cores.
    "small": EncoderSize(layers=2, hidden=128, heads=4, intermediate=512),
    # all-MiniLM-L6-v2's shape (the benchmark's model).
    "minilm": EncoderSize(layers=6, hidden=384, heads=12, intermediate=1536),
}


# ------------------------------------------------------------------------- the data


def make_vocabulary(size: int = WORDS, seed: int = 0) -> list[str]:
    """``size`` distinct made-up words of 1-4 syllables, the same for a seed."""
    rng = np.random.default_rng(seed)
    onsets = ["", "b", "br", "c", "ch", "d", "dr", "f", "fl", "g", "gr", "h", "j", "k", "l"]
    onsets += ["m", "n", "p", "pl", "qu", "r", "s", "sh", "st", "t", "th", "tr", "v", "w", "z"]
    nuclei = ["a", "e", "i", "o", "u", "ai", "ea", "ou", "y"]
    codas = ["", "", "", "n", "r", "s", "t", "l", "m", "nd", "st", "ck"]
    words: list[str] = []
    seen: set[str] = set()
    while len(words) < size:
        syllables = int(rng.choice([1, 2, 3, 4], p=[0.3, 0.4, 0.2, 0.1]))
        word = "".join(
            onsets[rng.integers(len(onsets))]
            + nuclei[rng.integers(len(nuclei))]
            + codas[rng.integers(len(codas))]
            for _ in range(syllables)
        )
        if word not in seen:
            seen.add(word)
            words.append(word)
    return words


def sentence_lengths(rows: int, seed: int = 0) -> np.ndarray:
    """Words per sentence: lognormal (median ``MEDIAN_WORDS``), clipped to 3-250."""
    rng = np.random.default_rng(seed)
    lengths = rng.lognormal(np.log(MEDIAN_WORDS), SIGMA, rows)
    return np.clip(np.rint(lengths), MIN_WORDS, MAX_WORDS).astype(np.int64)


def make_sentences(rows: int, seed: int = 0, vocabulary: list[str] | None = None) -> list[str]:
    """``rows`` sentences of :func:`sentence_lengths` words, Zipf-distributed
    over ``vocabulary`` (:func:`make_vocabulary`), with commas and a full stop."""
    vocab = np.array(vocabulary or make_vocabulary(), dtype=object)
    lengths = sentence_lengths(rows, seed)
    rng = np.random.default_rng(seed + 1)
    p = 1.0 / np.arange(1, len(vocab) + 1) ** 1.05
    words = vocab[rng.choice(len(vocab), size=int(lengths.sum()), p=p / p.sum())]
    commas = rng.random(len(words)) < 0.06
    words[commas] = words[commas] + ","
    out = []
    start = 0
    for n in lengths.tolist():
        sentence = " ".join(words[start : start + n]).rstrip(",")
        out.append(sentence[0].upper() + sentence[1:] + ".")
        start += n
    return out


def write_sentences(path: str, sentences: list[str], row_group: int = 4096) -> None:
    """``id long, text string`` to Parquet, ``row_group`` rows per row group."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.table(
        {"id": pa.array(np.arange(len(sentences), dtype=np.int64)), "text": pa.array(sentences)}
    )
    pq.write_table(table, path, row_group_size=row_group)


# -------------------------------------------------------------------- the tokenizer


def train_tokenizer(corpus: list[str], path: str, vocab_size: int = VOCAB_SIZE) -> str:
    """A BERT-style WordPiece tokenizer trained on ``corpus``, saved to ``path``
    (``tokenizer.json``): lower-casing BERT normalizer and pre-tokenizer,
    ``[CLS] A [SEP]`` (pairs ``[CLS] A [SEP] B [SEP]``, B with token type 1).
    No truncation or padding is saved: callers set them. Returns ``path``."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from tokenizers.trainers import WordPieceTrainer

    tokenizer = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tokenizer.normalizer = normalizers.BertNormalizer(lowercase=True)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer.decoder = decoders.WordPiece()
    trainer = WordPieceTrainer(vocab_size=vocab_size, special_tokens=SPECIALS)
    tokenizer.train_from_iterator(corpus, trainer=trainer)
    cls, sep = tokenizer.token_to_id("[CLS]"), tokenizer.token_to_id("[SEP]")
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls), ("[SEP]", sep)],
    )
    tokenizer.save(path)
    return path


def load_tokenizer(path: str, max_len: int = MAX_LEN, pad: bool = False) -> Any:
    """``tokenizer.json`` truncating at ``max_len`` tokens (specials included),
    and, with ``pad``, padding each ``encode_batch`` to its longest row."""
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(path)
    tokenizer.enable_truncation(max_length=max_len)
    if pad:
        tokenizer.enable_padding(pad_id=tokenizer.token_to_id("[PAD]"), pad_token="[PAD]")
    return tokenizer


def encode(tokenizer: Any, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``input_ids, attention_mask, token_type_ids`` of ``texts`` (int64), which
    must encode to one length (a padding tokenizer makes sure of it)."""
    encodings = tokenizer.encode_batch(texts)
    return tuple(
        torch.from_numpy(np.array([getattr(e, name) for e in encodings], dtype=np.int64))
        for name in ("ids", "attention_mask", "type_ids")
    )


# ------------------------------------------------------------------------ the model


class TextEncoder(torch.nn.Module):
    """A BERT encoder with mask-weighted mean pooling: ``[N, L]`` ids -> ``[N, hidden]``.

    Padded positions (``attention_mask`` 0) neither attend nor count in the
    mean, so a row's embedding does not depend on how much it was padded."""

    def __init__(self, bert: torch.nn.Module) -> None:
        super().__init__()
        self.bert = bert

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        token_type_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        hidden = self.bert(
            input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids
        )[0]
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)


def build_encoder(size: str = "small", vocab_size: int = VOCAB_SIZE, seed: int = 0) -> TextEncoder:
    """A :class:`TextEncoder` of ``ENCODERS[size]`` with random weights from ``seed``
    (``transformers``' ``BertModel``, no pooler; 512 positions), in eval mode."""
    from transformers import BertConfig, BertModel

    shape = ENCODERS[size]
    with _quiet_transformers():
        config = BertConfig(
            vocab_size=vocab_size,
            hidden_size=shape.hidden,
            num_hidden_layers=shape.layers,
            num_attention_heads=shape.heads,
            intermediate_size=shape.intermediate,
            max_position_embeddings=512,
            type_vocab_size=2,
            pad_token_id=0,
        )
        torch.manual_seed(seed)
        return TextEncoder(BertModel(config, add_pooling_layer=False)).eval()


@contextmanager
def _quiet_transformers() -> Iterator[None]:
    """``transformers``' logger at ERROR for a while: building a config and
    tracing a model (which reads every attribute, ``loss_function`` too) log
    notices about training-only settings that do not apply here."""
    from transformers.utils import logging

    verbosity = logging.get_verbosity()
    logging.set_verbosity_error()
    try:
        yield
    finally:
        logging.set_verbosity(verbosity)


def random_batch(
    rows: int, length: int, vocab_size: int, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``rows`` x ``length`` inputs as a tokenizer pads them: each row's own
    length in 1..``length`` (the first row the full length), ``[CLS]``/``[SEP]``
    ids at its ends, pad id 0 and mask 0 after it; token types 1 on the second
    half of the odd rows (sentence pairs)."""
    lengths = torch.randint(1, length + 1, (rows,), generator=generator)
    lengths[0] = length
    positions = torch.arange(length)
    mask = (positions < lengths[:, None]).long()
    ids = torch.randint(len(SPECIALS), vocab_size, (rows, length), generator=generator)
    ids[:, 0] = SPECIALS.index("[CLS]")
    ids[torch.arange(rows), lengths - 1] = SPECIALS.index("[SEP]")
    ids = ids * mask
    types = ((positions >= lengths[:, None] // 2) & (torch.arange(rows)[:, None] % 2 == 1)).long()
    return ids, mask, types * mask


def trace_encoder(model: TextEncoder) -> torch.jit.ScriptModule:
    """``model`` traced to TorchScript on a padded 4 x 24 example, with
    ``torch.jit.trace``'s own check re-tracing it at 3 x 7, 2 x 61, 5 x 130
    and 1 x 1 tokens: a graph that differs between those traces (a size
    baked in as a constant) or outputs that differ raise ``TracingCheckError``.

    Why not ``torchspark.export(model, ...)`` directly: ``transformers``'
    encoder converts two size comparisons to Python booleans while tracing
    (``masking_utils.prepare_padding_mask``: is the mask shorter than the
    sequence, never here; ``sdpa_attention_forward``: ``q_length > 1 and
    attention_mask is None`` for ``is_causal``, false for an encoder given a
    mask), and ``torchspark.export`` refuses any trace that bakes in a Python
    branch. Both branches go the same way at every length, which this trace's
    checks and :func:`check_export` verify."""
    vocab = model.bert.config.vocab_size
    generator = torch.Generator().manual_seed(0)
    example = random_batch(4, 24, vocab, generator)
    checks = [random_batch(r, n, vocab, generator) for r, n in ((3, 7), (2, 61), (5, 130), (1, 1))]
    with torch.no_grad(), warnings.catch_warnings(), _quiet_transformers():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)  # the two above, checked
        warnings.simplefilter("ignore", FutureWarning)  # transformers' own deprecations
        warnings.filterwarnings("ignore", "`torch.jit.*deprecated", DeprecationWarning)
        return torch.jit.trace(
            model, example, check_inputs=[example, *checks], check_tolerance=1e-5, strict=False
        )


def export_encoder(model: TextEncoder, path: str) -> str:
    """``model`` as TorchScript at ``path``: :func:`trace_encoder`, saved by
    ``torchspark.export`` (which runs the file beside the trace at the
    example's batch size, 1 row and twice the rows), then :func:`check_export`
    against the eager module at other lengths and batch sizes. Returns ``path``."""
    traced = trace_encoder(model)
    example = random_batch(4, 24, model.bert.config.vocab_size, torch.Generator().manual_seed(0))
    torchspark.export(traced, example, path)
    check_export(model, path)
    return path


def check_export(
    model: torch.nn.Module,
    path: str,
    lengths: tuple[int, ...] = (1, 2, 7, 61, 128, MAX_LEN),
    batches: tuple[int, ...] = (1, 5),
    vocab_size: int | None = None,
    seed: int = 1,
) -> float:
    """The exported file at ``path`` against the eager ``model`` at every
    sequence length x batch size given, on padded batches (:func:`random_batch`;
    ``vocab_size`` defaults to the encoder's). ``torchspark.ExportError``
    naming the shape where an output differs beyond float32 tolerances (rtol
    1e-4, atol 1e-5); returns the largest |difference|.

    Why: a trace records the sizes that the example's shape gave Python code,
    and ``torchspark.export``'s own check varies the batch size only, while a
    tokenizer's batches vary in length too."""
    exported = torch.jit.load(path)
    generator = torch.Generator().manual_seed(seed)
    vocab = vocab_size or model.bert.config.vocab_size
    worst = 0.0
    for length in lengths:
        for rows in batches:
            batch = random_batch(rows, length, vocab, generator)
            with torch.inference_mode():
                expected = model(*batch)
                try:
                    actual = exported(*batch)
                except Exception as e:
                    raise torchspark.ExportError(
                        f"check_export: the exported encoder fails on {rows} x {length} tokens "
                        f"where the module runs: {type(e).__name__}: {e}"
                    ) from e
            if actual.shape != expected.shape:
                raise torchspark.ExportError(
                    f"check_export: on {rows} x {length} tokens the module gives "
                    f"{list(expected.shape)}, the export {list(actual.shape)}"
                )
            diff = float((actual - expected).abs().max())
            worst = max(worst, diff)
            if not torch.allclose(actual, expected, rtol=1e-4, atol=1e-5):
                raise torchspark.ExportError(
                    f"check_export: on {rows} x {length} tokens the exported encoder differs "
                    f"from the module by up to {diff:.3g}: the trace baked in a shape"
                )
    return worst


# -------------------------------------------------------------------- the reference


@contextmanager
def torch_threads(threads: int | None) -> Iterator[None]:
    """torch's intra-op threads set to ``threads`` for a while (``None``: left
    as they are). The demo's driver-side work uses one: on the 2-core VM this
    was written on, with other work running (load ~4), the small encoder's
    forward on 64 x 32 tokens took 34 ms on 1 thread and 371 ms on 2, and the
    reference over 2,000 rows 1.1 s against 31 s."""
    if threads is None:
        yield
        return
    saved = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(saved)


def reference_embeddings(
    texts: list[str],
    tokenizer_path: str,
    model: TextEncoder,
    max_rows: int = 256,
    threads: int | None = 1,
) -> tuple[np.ndarray, np.ndarray]:
    """Embeddings of ``texts`` by eager ``model`` in this process, and their
    token lengths: the same tokenizer (truncating at ``MAX_LEN``), rows grouped
    by token length so that every batch is rows of one length, with no padding
    (an attention mask of ones).

    ``threads``: torch's intra-op threads meanwhile (:func:`torch_threads`).
    """
    with torch_threads(threads):
        return _reference(texts, tokenizer_path, model, max_rows)


def _reference(
    texts: list[str], tokenizer_path: str, model: TextEncoder, max_rows: int
) -> tuple[np.ndarray, np.ndarray]:
    tokenizer = load_tokenizer(tokenizer_path)
    encodings = tokenizer.encode_batch(texts)
    lengths = np.array([len(e.ids) for e in encodings], dtype=np.int64)
    out = np.empty((len(texts), model.bert.config.hidden_size), dtype=np.float32)
    with torch.inference_mode():
        for length in np.unique(lengths):
            rows = np.flatnonzero(lengths == length)
            for chunk in np.array_split(rows, -(-len(rows) // max_rows)):
                ids = torch.tensor([encodings[i].ids for i in chunk], dtype=torch.int64)
                types = torch.tensor([encodings[i].type_ids for i in chunk], dtype=torch.int64)
                out[chunk] = model(ids, torch.ones_like(ids), types).numpy()
    return out, lengths


def padding_share(lengths: np.ndarray, batch_rows: int) -> float:
    """The share of padded slots when ``lengths`` are cut, in order, into
    ``batch_rows``-row batches each padded to its longest row."""
    padded = sum(
        int(lengths[i : i + batch_rows].max()) * len(lengths[i : i + batch_rows])
        for i in range(0, len(lengths), batch_rows)
    )
    return 1.0 - float(lengths.sum()) / padded if padded else 0.0


# ------------------------------------------------------------------------ the jobs


def load_encoder(state_path: str, size: str, vocab_size: int) -> TextEncoder:
    """The encoder :func:`build_encoder` makes, with the weights saved at ``state_path``."""
    model = build_encoder(size, vocab_size)
    model.load_state_dict(torch.load(state_path))
    return model.eval()


def predict_fn_factory(
    tokenizer_path: str, state_path: str, size: str, vocab_size: int, threads: int | None = None
) -> Any:
    """``make_predict_fn`` for Spark's ``predict_batch_udf``, as its docs and users
    write it: it loads the tokenizer and the model once per Python worker (and
    sets torch's threads when ``threads`` is given); the predict function
    tokenizes its batch of strings, padded to the batch's longest row, and
    returns ``[rows, hidden]`` float32 embeddings."""

    def make_predict_fn():
        if threads:
            torch.set_num_threads(threads)
        tokenizer = load_tokenizer(tokenizer_path, pad=True)
        model = load_encoder(state_path, size, vocab_size)

        def predict(texts: np.ndarray) -> np.ndarray:
            with torch.inference_mode():
                return model(*encode(tokenizer, texts.tolist())).numpy()

        return predict

    return make_predict_fn


def _predict_batch_udf_job(
    df: Any, output: str, tokenizer_path: str, state_path: str, size: str, vocab_size: int
) -> None:
    """The job with Spark's ``predict_batch_udf`` (:func:`predict_fn_factory`),
    ``PBU_BATCH`` rows per model call."""
    from pyspark.ml.functions import predict_batch_udf
    from pyspark.sql.types import ArrayType, FloatType

    udf = predict_batch_udf(
        predict_fn_factory(tokenizer_path, state_path, size, vocab_size),
        return_type=ArrayType(FloatType()),
        batch_size=PBU_BATCH,
    )
    df.select("id", udf("text").alias("embedding")).write.mode("overwrite").parquet(output)


def _torchspark_job(df: Any, output: str, model_path: str, tokenizer_path: str) -> Any:
    text = torchspark.Input("text", kind="text", tokenizer=tokenizer_path, max_len=MAX_LEN)
    scored = torchspark.predict(df, model_path, inputs=text, output="embedding", keep=["id"])
    scored.write.mode("overwrite").parquet(output)
    return torchspark.last_report()


def _check(output_path: str, expected: np.ndarray) -> tuple[int, float]:
    """Rows and the largest |difference| from ``expected``, joined on id."""
    return check_vectors(output_path, "embedding", expected)


def run(spark: Any, args: argparse.Namespace, workdir: str) -> TaskResult:
    """The text task on ``spark``: ``args.rows`` sentences, ``args.text_model``."""
    rows = DEFAULT_ROWS if args.rows is None else args.rows
    size = args.text_model
    input_path = os.path.join(workdir, "text_input.parquet")
    tokenizer_path = os.path.join(workdir, "tokenizer.json")
    state_path = os.path.join(workdir, f"text_encoder_{size}.state.pt")
    model_path = os.path.join(workdir, f"text_encoder_{size}.pt")
    output_path = args.text_output or os.path.join(workdir, "text_predictions.parquet")
    baseline_path = os.path.join(workdir, "text_predictions_predict_batch_udf.parquet")

    with stopwatch() as t:
        sentences = make_sentences(rows)
        write_sentences(input_path, sentences)
    words = sentence_lengths(rows)
    step(
        f"[text 1/6] generated {rows:,} sentences -> {input_path} ({t[0]:.1f} s); words per "
        f"sentence: median {np.median(words):.0f}, mean {words.mean():.1f}, "
        f"p99 {np.percentile(words, 99):.0f}, max {words.max()}"
        if rows
        else f"[text 1/6] generated no sentences -> {input_path}"
    )

    with stopwatch() as t:
        corpus = make_sentences(20_000, seed=1000)  # not the scored rows
        train_tokenizer(corpus, tokenizer_path)
    vocab_size = load_tokenizer(tokenizer_path).get_vocab_size()
    step(
        f"[text 2/6] trained a WordPiece tokenizer ({vocab_size:,} tokens) -> {tokenizer_path} "
        f"({t[0]:.1f} s)"
    )

    with stopwatch() as t, torch_threads(1):
        model = build_encoder(size, vocab_size)
        torch.save(model.state_dict(), state_path)
        export_encoder(model, model_path)
    shape = ENCODERS[size]
    step(
        f"[text 3/6] built a BERT encoder ({size}: {shape.layers} layers, hidden {shape.hidden}, "
        f"{sum(p.numel() for p in model.parameters()) / 1e6:.1f}M parameters, random weights), "
        f"exported to TorchScript {model_path} and checked at lengths 1-{MAX_LEN} "
        f"({t[0]:.1f} s)"
    )

    step("[text 4/6] warming up the Python workers (a small job for each method)")
    parallelism = spark.sparkContext.defaultParallelism
    # Two partitions per core, for both methods: one small file is otherwise one task.
    df = spark.read.parquet(input_path).repartition(2 * parallelism)
    sample = df.limit(200).repartition(parallelism)
    _torchspark_job(sample, os.path.join(workdir, "text_warmup"), model_path, tokenizer_path)
    if not args.no_compare:
        _predict_batch_udf_job(
            sample,
            os.path.join(workdir, "text_warmup_pbu"),
            tokenizer_path,
            state_path,
            size,
            vocab_size,
        )

    step(f"[text 5/6] torchspark.predict with a text input -> {output_path}")
    with stopwatch() as t:
        report = _torchspark_job(df, output_path, model_path, tokenizer_path)
    wall = t[0]

    baseline_wall = None
    if not args.no_compare:
        step(f"[text 6/6] the same job with predict_batch_udf -> {baseline_path}")
        with stopwatch() as t:
            _predict_batch_udf_job(df, baseline_path, tokenizer_path, state_path, size, vocab_size)
        baseline_wall = t[0]

    with stopwatch() as t:
        expected, tokens = reference_embeddings(sentences, tokenizer_path, model)
    reference_s = t[0]
    got_rows, error = _check(output_path, expected)
    print()
    print(f"rows        {got_rows:,}")
    if rows:
        untruncated = load_tokenizer(tokenizer_path, max_len=1 << 30).encode_batch(sentences)
        truncated = sum(len(e.ids) > MAX_LEN for e in untruncated)
        print(
            f"tokens      per row: median {np.median(tokens):.0f}, mean {tokens.mean():.1f}, "
            f"max {tokens.max()} ({truncated} rows truncated at {MAX_LEN}"
            + (
                f"; the engine counted {report.rows_truncated})"
                if report is not None and report.rows_truncated != truncated
                else ")"
            )
        )
    print(f"wall        {wall:.2f} s (the Spark job: read, score, write Parquet; after warm-up)")
    print(f"throughput  {got_rows / wall:,.0f} rows/s" if wall > 0 else "throughput  -")
    if report is not None:
        print(
            f"latency     p50 {report.p50_ms:.1f} ms, p90 {report.p90_ms:.1f} ms, "
            f"p99 {report.p99_ms:.1f} ms per Arrow batch ({report.arrow_batches} batches, "
            f"{report.model_calls} model calls, {report.tasks} tasks)"
        )
        if report.token_budgets:
            print(
                "engine      token budget per task (max_tokens, chosen by the engine): "
                + ", ".join(map(str, report.token_budgets))
            )
    print(
        f"reference   {reference_s:.2f} s: eager, in this process, rows grouped by token "
        "length (no padding)"
    )
    base_ok = True
    if baseline_wall is not None:
        base_rows, base_error = _check(baseline_path, expected)
        base_ok = base_rows == rows and base_error <= TOLERANCE
        print(
            f"predict_batch_udf  {baseline_wall:.2f} s ({base_rows / baseline_wall:,.0f} rows/s): "
            f"torchspark is {baseline_wall / wall:.2f}x its speed; its predictions "
            + (f"match the reference (max abs diff {base_error:.1e})" if base_ok else "DIFFER")
            + (f" ({base_error:.3g})" if not base_ok else "")
        )
    print(
        f"predictions {output_path}" + ("" if args.workdir or args.text_output else " (temp dir)")
    )
    ok = got_rows == rows and error <= TOLERANCE and base_ok
    if got_rows == rows and error <= TOLERANCE:
        print(
            "OK: every embedding matches the eager reference (same tokenizer and module, "
            f"no padding) within {TOLERANCE:g} (max abs diff {error:.1e})"
        )
    else:
        print(f"FAILED: {got_rows:,} rows, embeddings differ from the reference by {error:.3g}")
    print()
    pad = padding_share(tokens, PBU_BATCH) if rows else 0.0
    return TaskResult(
        "text",
        rows,
        wall,
        baseline_wall,
        ok,
        gain=(
            f"predict_batch_udf pads each {PBU_BATCH}-row batch to its longest row, so "
            f"{pad:.0%} of the tokens its model computes are padding on these skewed lengths; "
            "torchspark sorts each Arrow batch's rows by token length and cuts batches by a "
            "token budget it tunes as it runs, so it computes almost only real tokens, and "
            "tokenizes each Arrow batch (Rust, GIL released) while the model runs the previous "
            "one"
        ),
    )
