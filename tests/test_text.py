"""Text inputs (kind="text") and attention masks of padded ids, against
references computed here: the tokenizer called directly (``tokenizers``, one
row at a time) and the eager module on each row alone."""

from __future__ import annotations

import os
import threading

import numpy as np
import pyarrow as pa
import pytest
import torch

import torchspark
from torchspark import Engine, Input, NullValueError

tokenizers = pytest.importorskip("tokenizers")

VOCABULARY = (
    "the quick brown fox jumps over a lazy dog while many cats sleep in warm sunny "
    "places and birds sing songs about rivers mountains forests cities machines data models"
)
WORDS = VOCABULARY.split()


def sentences(rng: np.random.Generator, n: int, longest: int = 60) -> list[str]:
    """Skewed lengths: most short, a long tail."""
    lengths = np.minimum(np.ceil(rng.lognormal(2.0, 0.9, size=n)).astype(int), longest)
    return [" ".join(rng.choice(WORDS, size=int(k))) for k in lengths]


def train_tokenizer(path: str) -> str:
    """A WordPiece tokenizer with BERT's conventions, trained here on
    ``sentences``; saved at ``path``, returned."""
    from tokenizers import models, normalizers, pre_tokenizers, processors, trainers

    rng = np.random.default_rng(0)
    tok = tokenizers.Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer()
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    trainer = trainers.WordPieceTrainer(
        vocab_size=120, special_tokens=["[UNK]", "[CLS]", "[SEP]", "[PAD]"]
    )
    tok.train_from_iterator(sentences(rng, 2000), trainer)
    cls, sep = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls), ("[SEP]", sep)],
    )
    tok.save(path)
    return path


@pytest.fixture(scope="module")
def tokenizer_path(tmp_path_factory: pytest.TempPathFactory) -> str:
    return train_tokenizer(str(tmp_path_factory.mktemp("tok") / "tokenizer.json"))


class Encoder(torch.nn.Module):
    """A tiny encoder in the Hugging Face calling convention: mean-pooled
    embeddings over the attention mask, token types added."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.embed = torch.nn.Embedding(200, 8)
        self.types = torch.nn.Embedding(2, 8)
        self.out = torch.nn.Linear(8, 3)

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor
    ) -> torch.Tensor:
        hidden = torch.tanh(self.out(self.embed(input_ids) + self.types(token_type_ids)))
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * mask).sum(1) / mask.sum(1).clamp_min(1.0)


class TwoArguments(torch.nn.Module):
    """input_ids and attention_mask only (no token types), as many encoders."""

    def __init__(self) -> None:
        super().__init__()
        self.inner = Encoder()

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.inner(input_ids, attention_mask, torch.zeros_like(input_ids))


class BatchShape(torch.nn.Module):
    """Per row: its batch's padded slots (rows x width) and its own mask sum."""

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor
    ) -> torch.Tensor:
        slots = torch.full_like(input_ids[:, 0], input_ids.numel())
        return torch.stack([slots, attention_mask.sum(1), token_type_ids.sum(1)], dim=1)


@pytest.fixture(scope="module")
def model_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("text_models")
    files = {}
    for name, module in [
        ("encoder", Encoder()),
        ("two", TwoArguments()),
        ("shape", BatchShape()),
    ]:
        path = str(root / f"{name}.pt")
        torch.jit.script(module.eval()).save(path)
        files[name] = path
    return files


def reference(path: str, texts, max_len: int, module: torch.nn.Module, pairs=None) -> torch.Tensor:
    """Each row tokenized alone by the tokenizer and run alone by the module."""
    tok = tokenizers.Tokenizer.from_file(path)
    tok.no_padding()
    tok.enable_truncation(max_len)
    rows = []
    for i, text in enumerate(texts):
        enc = tok.encode(text) if pairs is None else tok.encode(text, pairs[i])
        args = [torch.tensor([enc.ids]), torch.tensor([enc.attention_mask])]
        if isinstance(module, Encoder):
            args.append(torch.tensor([enc.type_ids]))
        with torch.no_grad():
            rows.append(module(*args))
    return torch.cat(rows)


def test_text_input_matches_the_tokenizer_and_the_module_row_by_row(
    tokenizer_path, model_files, rng
):
    texts = [*sentences(rng, 400), "", "fox"]  # an empty text and a one-token text
    batch = pa.record_batch({"id": np.arange(len(texts)), "text": pa.array(texts)})
    spec = Input("text", kind="text", tokenizer=tokenizer_path, max_len=24)
    with Engine(model_files["encoder"], inputs=spec) as engine:
        got = engine.run(batch)
        stats = engine.stats()
    expected = reference(tokenizer_path, texts, 24, Encoder().eval())
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
    # Truncation is counted: the rows whose full encoding is longer than 24.
    full = tokenizers.Tokenizer.from_file(tokenizer_path)
    longer = sum(len(full.encode(t).ids) > 24 for t in texts)
    assert longer > 0
    assert stats["rows_truncated"] == longer
    assert stats["token_budget"] in (256, 512, 1024, 2048, 4096, 8192, 16384)


def test_text_input_by_name_with_two_arguments_and_large_strings(tokenizer_path, model_files, rng):
    texts = sentences(rng, 50)
    batch = pa.record_batch({"text": pa.array(texts, pa.large_string())})
    inputs = {"input_ids": Input("text", kind="text", tokenizer=tokenizer_path, max_len=16)}
    with Engine(model_files["two"], inputs=inputs) as engine:
        got = engine.run(batch)
    expected = reference(tokenizer_path, texts, 16, TwoArguments().eval().inner)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)


def test_sentence_pairs_get_token_types(tokenizer_path, model_files, rng):
    a, b = sentences(rng, 60), sentences(rng, 60)
    batch = pa.record_batch({"q": pa.array(a), "p": pa.array(b)})
    spec = Input(["q", "p"], kind="text", tokenizer=tokenizer_path, max_len=40)
    with Engine(model_files["encoder"], inputs=spec) as engine:
        got = engine.run(batch)
    expected = reference(tokenizer_path, a, 40, Encoder().eval(), pairs=b)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)


def test_max_len_defaults_to_the_tokenizers_truncation_then_512(tokenizer_path, tmp_path, rng):
    tok = tokenizers.Tokenizer.from_file(tokenizer_path)
    text = " ".join(["fox"] * 700)
    batch = pa.record_batch({"text": pa.array([text, "dog"])})
    # The module receives the ids: their count per row is the kept length.
    lengths_model = str(tmp_path / "lengths.pt")

    class Lengths(torch.nn.Module):
        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
            return attention_mask.sum(1)

    torch.jit.script(Lengths()).save(lengths_model)
    with Engine(lengths_model, inputs=Input("text", kind="text", tokenizer=tok)) as engine:
        assert engine.run(batch).tolist() == [512, 3]
        assert engine.stats()["rows_truncated"] == 1
    tok.enable_truncation(100)  # a tokenizer that truncates: its setting holds
    with Engine(lengths_model, inputs=Input("text", kind="text", tokenizer=tok)) as engine:
        assert engine.run(batch).tolist() == [100, 3]


def test_tokenizer_objects_and_directories_are_accepted(tokenizer_path, model_files, rng):
    texts = sentences(rng, 20)
    batch = pa.record_batch({"text": pa.array(texts)})
    expected = reference(tokenizer_path, texts, 32, Encoder().eval())
    transformers = pytest.importorskip("transformers")
    fast = transformers.PreTrainedTokenizerFast(tokenizer_file=tokenizer_path)
    for tokenizer in (
        tokenizers.Tokenizer.from_file(tokenizer_path),
        os.path.dirname(tokenizer_path),
        fast,
    ):
        spec = Input("text", kind="text", tokenizer=tokenizer, max_len=32)
        assert isinstance(spec.tokenizer, str) and os.path.isfile(spec.tokenizer)
        with Engine(model_files["encoder"], inputs=spec) as engine:
            torch.testing.assert_close(engine.run(batch), expected, rtol=1e-5, atol=1e-6)


def test_bad_tokenizers_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"tokenizer '.*missing\.json': no such file"):
        Input("text", kind="text", tokenizer=str(tmp_path / "missing.json"))
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "config.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match=r"a directory without a tokenizer\.json .*config"):
        Input("text", kind="text", tokenizer=str(tmp_path / "model"))
    junk = tmp_path / "junk.json"
    junk.write_bytes(b"<html>not a tokenizer</html>")
    with pytest.raises(ValueError, match=r"not a Hugging Face tokenizer\.json .*'<html>"):
        Input("text", kind="text", tokenizer=str(junk))
    with pytest.raises(ValueError, match="expected tokenizer="):
        Input("text", kind="text")
    with pytest.raises(TypeError, match=r"Input\.tokenizer: expected a tokenizer\.json path"):
        Input("text", kind="text", tokenizer=42)
    with pytest.raises(ValueError, match=r"only kind 'text' takes a tokenizer"):
        Input("ids", kind="pad", tokenizer=str(junk))


def test_null_texts_are_an_error_or_filled(tokenizer_path, model_files):
    batch = pa.record_batch({"id": [10, 11, 12], "text": pa.array(["a fox", None, "dog"])})
    spec = Input("text", kind="text", tokenizer=tokenizer_path)
    with (
        Engine(model_files["encoder"], inputs=spec) as engine,
        pytest.raises(NullValueError, match=r"column 'text': 1 null row \(first in row 1\)"),
    ):
        engine.run(batch)
    filled = Input("text", kind="text", tokenizer=tokenizer_path, nulls="fill")
    with Engine(model_files["encoder"], inputs=filled) as engine:
        got = engine.run(batch)
    expected = reference(tokenizer_path, ["a fox", "", "dog"], 512, Encoder().eval())
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)


def test_wrong_column_types_and_unfed_arguments_are_named(tokenizer_path, model_files, tmp_path):
    spec = Input("text", kind="text", tokenizer=tokenizer_path)
    with (
        Engine(model_files["encoder"], inputs=spec) as engine,
        pytest.raises(TypeError, match=r"input column 'text' \(kind 'text'\): expected string"),
    ):
        engine.run(pa.record_batch({"text": pa.array([1, 2])}))

    class Extra(torch.nn.Module):
        def forward(self, input_ids: torch.Tensor, pixel_values: torch.Tensor) -> torch.Tensor:
            return input_ids.float().sum(1) + pixel_values.sum(1)

    path = str(tmp_path / "extra.pt")
    torch.jit.script(Extra()).save(path)
    with pytest.raises(ValueError, match=r"missing \['pixel_values'\]"):
        Engine(path, inputs=spec)


def test_token_budget_counts_a_texts_ids_mask_and_types_once(tokenizer_path, model_files, rng):
    texts = sentences(rng, 300)
    batch = pa.record_batch({"text": pa.array(texts)})
    spec = Input("text", kind="text", tokenizer=tokenizer_path, max_len=48)
    with Engine(model_files["shape"], inputs=spec, max_tokens=96) as engine:
        got = engine.run(batch)
    full = tokenizers.Tokenizer.from_file(tokenizer_path)
    full.enable_truncation(48)
    lengths = torch.tensor([len(full.encode(t).ids) for t in texts])
    slots, mask_sum, types = got[:, 0], got[:, 1], got[:, 2]
    # Row order restored: each row's mask is its own length.
    assert torch.equal(mask_sum, lengths)
    assert torch.equal(types, torch.zeros_like(types))
    # Every batch within the budget, unless one row alone is over it.
    assert bool(((slots <= 96) | (slots == lengths)).all())
    # Counted once, not three times (ids, mask, types): batches use the budget.
    assert int(slots.max()) > 96 // 3


def test_auto_budget_settles_and_sorting_cuts_padding(tokenizer_path, model_files, rng):
    texts = sentences(rng, 3000)
    batches = [pa.record_batch({"text": pa.array(texts[i : i + 500])}) for i in range(0, 3000, 500)]
    spec = Input("text", kind="text", tokenizer=tokenizer_path, max_len=64)
    with Engine(model_files["encoder"], inputs=spec) as engine:
        got = torch.cat(list(engine.map(batches)))
        sorted_stats = engine.stats()
    with Engine(model_files["encoder"], inputs=spec, sort_window=0) as engine:
        unsorted = torch.cat(list(engine.map(batches)))
        unsorted_stats = engine.stats()
    expected = reference(tokenizer_path, texts, 64, Encoder().eval())
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(unsorted, expected, rtol=1e-5, atol=1e-6)
    assert sorted_stats["padding_ratio"] < unsorted_stats["padding_ratio"]
    # Tuning compared budgets in pairs, each measured on several batches.
    for trial in sorted_stats["token_budget_trials"]:
        assert trial["batches"] >= 6 and trial["tokens_per_s"] > 0


def test_one_engine_tokenizes_on_several_threads(tokenizer_path, model_files, rng):
    texts = sentences(rng, 800)
    expected = reference(tokenizer_path, texts, 32, Encoder().eval())
    spec = Input("text", kind="text", tokenizer=tokenizer_path, max_len=32)
    results: dict[int, torch.Tensor] = {}
    errors: list[BaseException] = []
    with Engine(model_files["encoder"], inputs=spec) as engine:

        def work(t: int) -> None:
            try:
                part = texts[t * 200 : (t + 1) * 200]
                for _ in range(3):
                    results[t] = engine.run(pa.record_batch({"text": pa.array(part)}))
            except BaseException as e:  # reported below
                errors.append(e)

        threads = [threading.Thread(target=work, args=(t,)) for t in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=120)
    assert not errors, errors
    torch.testing.assert_close(torch.cat([results[t] for t in range(4)]), expected)


def test_padded_ids_bring_their_attention_mask(model_files, rng):
    rows = [list(rng.integers(1, 150, size=int(k))) for k in rng.integers(1, 20, size=100)]
    batch = pa.record_batch({"ids": pa.array(rows, pa.list_(pa.int64()))})
    with Engine(model_files["two"], inputs=Input("ids", kind="pad", max_len=12)) as engine:
        got = engine.run(batch)
    module = TwoArguments().eval()
    with torch.no_grad():
        expected = torch.cat(
            [
                module(torch.tensor([r[:12]]), torch.ones(1, len(r[:12]), dtype=torch.long))
                for r in rows
            ]
        )
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
    tensors = torchspark.engine.input_tensors(
        batch, Input("ids", kind="pad", max_len=12), ["input_ids", "attention_mask"]
    )
    lengths = torch.tensor([min(len(r), 12) for r in rows])
    assert torch.equal(tensors[1].sum(1), lengths)
    assert tensors[1].dtype == torch.int64


@pytest.mark.spark
def test_predict_scores_a_text_column(spark, tokenizer_path, model_files, rng):
    texts = sentences(rng, 600)
    df = spark.createDataFrame([(i, t) for i, t in enumerate(texts)], "id long, text string")
    scored = torchspark.predict(
        df.repartition(3),
        model_files["encoder"],
        inputs=Input("text", kind="text", tokenizer=tokenizer_path, max_len=32),
        output="embedding",
        keep=["id"],
    )
    rows = sorted(scored.collect(), key=lambda r: r["id"])
    assert [r["id"] for r in rows] == list(range(len(texts)))
    got = torch.tensor([r["embedding"] for r in rows])
    expected = reference(tokenizer_path, texts, 32, Encoder().eval())
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
    full = tokenizers.Tokenizer.from_file(tokenizer_path)
    report = torchspark.last_report()
    assert report.rows_truncated == sum(len(full.encode(t).ids) > 32 for t in texts) > 0
    assert report.token_budgets and "text rows truncated" in str(report)
    # Every column kept (the arrow_udf route on Spark 4.1+): the same values.
    spec = Input("text", kind="text", tokenizer=tokenizer_path, max_len=32)
    kept = torchspark.predict(df, model_files["encoder"], inputs=spec, output="embedding")
    rows = sorted(kept.collect(), key=lambda r: r["id"])
    assert rows[7]["text"] == texts[7]
    torch.testing.assert_close(torch.tensor([r["embedding"] for r in rows]), expected)
