"""Tokenizing a string column: torchspark's text input against ``encode_batch`` from Python.

Workload: an Arrow batch of N = 10,000 strings (Spark's Arrow batch size;
``--quick``: 2,000) of skewed lengths (lognormal word counts, 1-250 words, a
fixed vocabulary, numpy ``default_rng(0)``), tokenized by the demo's WordPiece
tokenizer (``torchspark.demo.text.train_tokenizer``, 8,000 tokens), truncated at 256 tokens.

Cases, timed interleaved in one process:

* ``encode_batch``: ``tokenizer.encode_batch(texts)`` on a Python list that
  exists already: the tokenizer alone (the floor).
* torchspark: what ``Input(kind="text")`` runs per Arrow batch: the strings
  read from Arrow (``to_pylist``), ``encode_batch``, and the ids and token
  types built into two ``list<int32>`` Arrow columns for the native engine.
* the usual user code (a ``predict_batch_udf`` predict function): the
  tokenizer padding to the batch's longest row, then ``torch.tensor`` of the
  ids and the mask, per batch of 1,000 rows.

Figures are tokens per second (real tokens, no padding), and each case's
time over ``encode_batch``'s: what the Arrow hand-off adds.
"""

from __future__ import annotations

import sys

import numpy as np
import pyarrow as pa
import torch
from _bench import Case, finish_args, footer, header, parser, ratio, run_interleaved, table, tm

from torchspark.text import Tokenize

WORDS = (
    "the of and to in is was for on that with as by at from his an were are which this be "
    "has had it not or have but one its new after also first their two who been they more "
    "data model spark torch batch score tensor arrow column engine token budget image text"
)
VOCABULARY = WORDS.split()


def make_texts(n: int) -> list[str]:
    rng = np.random.default_rng(0)
    words = np.clip(np.ceil(rng.lognormal(3.0, 0.8, size=n)), 1, 250).astype(int)
    suffixes = ["", "s", "ing", "ed", "ly"]
    return [
        " ".join(rng.choice(VOCABULARY) + rng.choice(suffixes) for _ in range(k)) for k in words
    ]


def make_tokenizer(texts: list[str], path: str) -> None:
    """The demo's BERT-style WordPiece tokenizer, 8,000 tokens, trained on ``texts``."""
    from torchspark.demo.text import train_tokenizer

    train_tokenizer(texts, path, vocab_size=8000)


def main(argv: list[str] | None = None) -> int:
    import os
    import tempfile

    from tokenizers import Tokenizer

    p = parser(__doc__, default_rounds=7, quick_rounds=3)
    args = finish_args(p.parse_args(argv))
    header("tokenize_bench: Input(kind='text') tokenization vs encode_batch", args)
    n = 2_000 if args.quick else 10_000
    texts = make_texts(n)
    path = os.path.join(tempfile.mkdtemp(), "tokenizer.json")
    make_tokenizer(texts, path)
    batch = pa.record_batch({"text": pa.array(texts)})

    plain = Tokenizer.from_file(path)
    plain.enable_truncation(256)
    padded = Tokenizer.from_file(path)
    padded.enable_truncation(256)
    padded.enable_padding(pad_id=padded.token_to_id("[PAD]"))
    tokenize = Tokenize(path, ["text"], 256, "error", "", True)

    # Same token ids every way.
    ids, _, _ = tokenize(batch)
    reference = [e.ids for e in plain.encode_batch(texts)]
    assert ids.to_pylist() == reference
    tokens = sum(map(len, reference))

    def user() -> None:
        for i in range(0, n, 1000):
            encodings = padded.encode_batch(texts[i : i + 1000])
            torch.tensor([e.ids for e in encodings])
            torch.tensor([e.attention_mask for e in encodings])

    cases = [
        Case("encode_batch", lambda: plain.encode_batch(texts)),
        Case("torchspark", lambda: tokenize(batch)),
        Case("torchspark-ids", lambda: tokenize(batch, False)),
        Case("user", user),
    ]
    run_interleaved(cases, rounds=args.rounds, min_round_s=0.2)
    floor = cases[0].median
    labels = {
        "encode_batch": "encode_batch(list of str) alone",
        "torchspark": "torchspark text input (Arrow strings -> Arrow ids and types)",
        "torchspark-ids": "the same for a model without token_type_ids (ids only)",
        "user": "user code: pad to longest + torch.tensor, 1,000-row batches",
    }
    print(f"{n:,} strings, {tokens:,} tokens ({tokens / n:.1f} per row), truncation at 256\n")
    rows = [
        (labels[c.name], tm(c), f"{tokens / c.median / 1e6:.2f} M", ratio(c.median / floor))
        for c in cases
    ]
    print(table(["case", "time per batch", "tokens/s", "time / encode_batch"], rows))
    footer()
    return 0


if __name__ == "__main__":
    sys.exit(main())
