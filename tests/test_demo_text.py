"""The demo's text task (torchspark.demo.text): its data, tokenizer, model export
and reference, at tiny sizes, against independent computations."""

from __future__ import annotations

import argparse
import warnings

import numpy as np
import pytest
import torch

import torchspark
from torchspark.demo import text as T

TINY = T.EncoderSize(layers=1, hidden=32, heads=2, intermediate=64)


@pytest.fixture(scope="module")
def tokenizer_path(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("tok") / "tokenizer.json"
    return T.train_tokenizer(T.make_sentences(1500, seed=1000), str(path), vocab_size=1000)


@pytest.fixture
def tiny_encoder(monkeypatch) -> T.TextEncoder:
    monkeypatch.setitem(T.ENCODERS, "tiny", TINY)
    return T.build_encoder("tiny", vocab_size=1000)


def test_sentences_have_skewed_lengths_in_range():
    sentences = T.make_sentences(5000)
    words = np.array([len(s.split()) for s in sentences])
    assert words.min() >= T.MIN_WORDS and words.max() <= T.MAX_WORDS
    assert np.array_equal(words, T.sentence_lengths(5000))
    median, mean = np.median(words), words.mean()
    skewness = ((words - mean) ** 3).mean() / words.std() ** 3
    assert mean > 1.2 * median  # long right tail
    assert skewness > 2
    assert np.percentile(words, 99) > 4 * median
    assert all(s[0].isupper() and s.endswith(".") for s in sentences[:50])


def test_sentences_are_fixed_by_the_seed():
    assert T.make_sentences(200) == T.make_sentences(200)
    assert T.make_sentences(200, seed=1) != T.make_sentences(200)
    vocab = T.make_vocabulary(500)
    assert len(set(vocab)) == 500 and vocab == T.make_vocabulary(500)


def test_tokenizer_is_a_bert_wordpiece(tokenizer_path):
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(tokenizer_path)  # the saved file, read back directly
    assert 100 < tok.get_vocab_size() <= 1000
    assert [tok.token_to_id(s) for s in T.SPECIALS] == list(range(len(T.SPECIALS)))
    common, rare = T.make_vocabulary()[0], "".join(T.make_vocabulary()[1:4])
    enc = tok.encode(f"{common.upper()} {rare}, xx.")
    assert enc.tokens[0] == "[CLS]" and enc.tokens[-1] == "[SEP]"
    assert enc.tokens[1] == common  # lower-cased by the BERT normalizer, a word of its own
    assert any(t.startswith("##") for t in enc.tokens)  # an unseen compound in word pieces
    assert "," in enc.tokens and "." in enc.tokens  # split off by the BERT pre-tokenizer
    assert "[UNK]" in enc.tokens  # 'x' never occurs in the made-up words
    assert enc.type_ids == [0] * len(enc.ids)
    pair = tok.encode(common, f"{common} {common}")
    assert pair.tokens == ["[CLS]", common, "[SEP]", common, common, "[SEP]"]
    assert pair.type_ids == [0, 0, 0, 1, 1, 1]


def test_load_tokenizer_truncates_and_pads(tokenizer_path):
    word = T.make_vocabulary()[0]
    long_text = " ".join([word] * 100)
    tok = T.load_tokenizer(tokenizer_path, max_len=16)
    enc = tok.encode(long_text)
    assert len(enc.ids) == 16 and enc.tokens[0] == "[CLS]" and enc.tokens[-1] == "[SEP]"
    ids, mask, types = T.encode(T.load_tokenizer(tokenizer_path, pad=True), [word, long_text])
    assert ids.dtype == torch.int64 and ids.shape == mask.shape == types.shape
    assert ids.shape[1] == len(T.load_tokenizer(tokenizer_path).encode(long_text).ids)
    assert mask[0].sum() == 3 and (ids[0, 3:] == 0).all() and (mask[1] == 1).all()


def test_encoder_embedding_ignores_padding(tiny_encoder):
    ids, mask, types = T.random_batch(4, 20, 1000, torch.Generator().manual_seed(3))
    with torch.inference_mode():
        padded = tiny_encoder(ids, mask, types)
        for row in range(4):
            n = int(mask[row].sum())
            alone = tiny_encoder(
                ids[row : row + 1, :n], mask[row : row + 1, :n], types[row, None, :n]
            )
            torch.testing.assert_close(padded[row], alone[0], rtol=1e-5, atol=1e-5)
    assert padded.shape == (4, TINY.hidden)


@pytest.mark.slow
def test_export_matches_eager_at_other_lengths(tiny_encoder, tmp_path):
    path = T.export_encoder(tiny_encoder, str(tmp_path / "enc.pt"))
    assert T.check_export(tiny_encoder, path) <= 1e-5
    # Independently of check_export: lengths and batch sizes the trace never saw.
    exported = torch.jit.load(path)
    generator = torch.Generator().manual_seed(7)
    for rows, length in ((2, 3), (9, 200), (1, T.MAX_LEN)):
        batch = T.random_batch(rows, length, 1000, generator)
        with torch.inference_mode():
            torch.testing.assert_close(exported(*batch), tiny_encoder(*batch), rtol=1e-4, atol=1e-5)


class _BakesLength(torch.nn.Module):
    """Converts the sequence length to a Python int: a trace bakes it in."""

    def __init__(self, encoder: torch.nn.Module) -> None:
        super().__init__()
        self.encoder = encoder

    def forward(self, ids, mask, types):
        n = int(ids.shape[1])
        return self.encoder(ids, mask, types) + torch.arange(n).float().mean()


def test_check_export_catches_a_baked_length(tiny_encoder, tmp_path):
    module = _BakesLength(tiny_encoder).eval()
    example = T.random_batch(4, 24, 1000, torch.Generator().manual_seed(0))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(module, example, check_trace=False, strict=False)
    path = str(tmp_path / "baked.pt")
    traced.save(path)
    with pytest.raises(torchspark.ExportError, match="baked in a shape"):
        T.check_export(module, path, lengths=(24, 7), batches=(2,), vocab_size=1000)


def test_reference_matches_rows_scored_one_by_one(tiny_encoder, tokenizer_path):
    sentences = T.make_sentences(40, seed=5)
    expected, lengths = T.reference_embeddings(sentences, tokenizer_path, tiny_encoder, max_rows=8)
    tok = T.load_tokenizer(tokenizer_path)
    with torch.inference_mode():
        for i, sentence in enumerate(sentences):
            enc = tok.encode(sentence)
            ids = torch.tensor([enc.ids])
            got = tiny_encoder(ids, torch.ones_like(ids), torch.tensor([enc.type_ids]))
            np.testing.assert_allclose(expected[i], got[0].numpy(), rtol=1e-5, atol=1e-5)
            assert lengths[i] == len(enc.ids)


def test_padding_share():
    assert T.padding_share(np.array([1, 3]), 2) == pytest.approx(1 / 3)
    assert T.padding_share(np.array([1, 3]), 1) == 0.0
    assert T.padding_share(np.array([5, 5, 5, 1]), 2) == pytest.approx(1 - 16 / 20)


@pytest.mark.slow
@pytest.mark.spark
def test_text_task_end_to_end(spark, tmp_path, capsys):
    # The demo's text task on the shared session: torchspark's text input and the
    # predict_batch_udf baseline, each embedding checked by run() and again here.
    args = argparse.Namespace(
        rows=300, text_model="small", text_output=None, workdir=str(tmp_path), no_compare=False
    )
    result = T.run(spark, args, str(tmp_path))
    out = capsys.readouterr().out
    assert result.ok, out
    assert result.rows == 300 and result.baseline_s is not None
    assert "OK: every embedding matches the eager reference" in out
    rows, diff = T._check(
        str(tmp_path / "text_predictions.parquet"),
        T.reference_embeddings(
            T.make_sentences(300),
            str(tmp_path / "tokenizer.json"),
            T.load_encoder(
                str(tmp_path / "text_encoder_small.state.pt"),
                "small",
                T.load_tokenizer(str(tmp_path / "tokenizer.json")).get_vocab_size(),
            ),
        )[0],
    )
    assert rows == 300 and diff <= T.TOLERANCE
