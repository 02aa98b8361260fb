"""Small models for the engine tests, and a cache of their exported files.

Every model is deterministic (seeded weights) and tiny, so that exports are
cheap and eager references are exact. ``ModelFiles`` exports each model once
per test session: TorchScript by trace through ``torchspark.export``, except
the models that need control flow or dict outputs, which are scripted.
"""

from __future__ import annotations

import os
import threading
import warnings
from collections.abc import Callable

import torch

import torchspark

FEATURES = 8
VOCAB = 50
EMBED = 3


def _seeded(seed: int) -> None:
    torch.manual_seed(seed)


class MLP(torch.nn.Module):
    """[rows, 8] float -> [rows, 4] float."""

    def __init__(self) -> None:
        super().__init__()
        _seeded(0)
        self.net = torch.nn.Sequential(
            torch.nn.Linear(FEATURES, 16), torch.nn.ReLU(), torch.nn.Linear(16, 4)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class TwoInput(torch.nn.Module):
    """forward(x [rows, 8], y [rows, 3]) -> [rows, 2]: argument order matters."""

    def __init__(self) -> None:
        super().__init__()
        _seeded(1)
        self.a = torch.nn.Linear(FEATURES, 2)
        self.b = torch.nn.Linear(3, 2)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.a(x) * y[:, :1] + self.b(y)


class TupleOut(torch.nn.Module):
    """[rows, 8] -> ([rows, 4] float, [rows] float, [rows] int64)."""

    def __init__(self) -> None:
        super().__init__()
        _seeded(2)
        self.lin = torch.nn.Linear(FEATURES, 4)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.lin(x), x.sum(1), x.argmax(1)


class DictOut(torch.nn.Module):
    """forward(x, y) -> {"sum": x + y, "score": [rows]}: scripted (a trace rejects dicts)."""

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"sum": x + y, "score": (x * y).sum(1)}


class Rows(torch.nn.Module):
    """ids [rows, k] int64 -> (ids * 2 + 1, rows of the model call, per row).

    The second output shows how the engine batched each row."""

    def forward(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return ids * 2 + 1, torch.zeros_like(ids[:, 0]) + ids.size(0)


class Identity(torch.nn.Module):
    """Returns (views of) its input: outputs alias whatever the engine staged."""

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return x, x[:, 0]


class Bag(torch.nn.Module):
    """tokens [rows, L] int64, 0 = padding -> (sum of embeddings of the non-pad
    tokens [rows, 3], rows of the call [rows], padded width of the call [rows])."""

    def __init__(self) -> None:
        super().__init__()
        _seeded(3)
        self.emb = torch.nn.Embedding(VOCAB, EMBED)

    def forward(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        mask = (tokens != 0).unsqueeze(-1).to(torch.float32)
        bag = (self.emb(tokens) * mask).sum(1)
        zero = torch.zeros_like(tokens[:, 0])
        return bag, zero + tokens.size(0), zero + tokens.size(1)

    def reference(self, rows: list[list[int]]) -> torch.Tensor:
        """Eager, one row at a time, no padding at all."""
        with torch.no_grad():
            out = [
                self.emb(torch.tensor(r, dtype=torch.long)).sum(0) if r else torch.zeros(EMBED)
                for r in rows
            ]
        return torch.stack(out)


class PerToken(torch.nn.Module):
    """tokens [rows, L] int64, 0 = padding -> (per-token embeddings [rows, L, 3],
    with the width of the call at pad positions; bag of the row [rows, 3]): the
    first output's pad positions depend on how the engine batched the row,
    its real positions do not."""

    def __init__(self) -> None:
        super().__init__()
        self.bag = Bag()

    def forward(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        pad = (tokens == 0).unsqueeze(-1).to(torch.float32)
        return self.bag.emb(tokens) + pad * tokens.size(1), self.bag(tokens)[0]

    def reference(self, rows: list[list[int]], width: int) -> torch.Tensor:
        """Eager, one row at a time: [rows, width, 3], 0 past each row's length."""
        out = torch.zeros(len(rows), width, EMBED)
        with torch.no_grad():
            for i, r in enumerate(rows):
                if r:
                    out[i, : len(r)] = self.bag.emb(torch.tensor(r))
        return out


class TokensAndDense(torch.nn.Module):
    """forward(dense [rows, 3] float32, tokens [rows, L] int64) -> bag of tokens + dense:
    a row's output depends on both inputs of that same row."""

    def __init__(self) -> None:
        super().__init__()
        self.bag = Bag()

    def forward(self, dense: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        return self.bag(tokens)[0] + dense

    def reference(self, dense: torch.Tensor, rows: list[list[int]]) -> torch.Tensor:
        return self.bag.reference(rows) + dense


class TwoTexts(torch.nn.Module):
    """forward(a [rows, La], b [rows, Lb]) int64, 0 = padding -> (bag(a) + 2 bag(b)
    [rows, 3], rows of the call [rows], La + Lb of the call [rows]): two padded
    inputs, as a cross-encoder takes a sentence pair."""

    def __init__(self) -> None:
        super().__init__()
        self.bag = Bag()

    def forward(
        self, a: torch.Tensor, b: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        zero = torch.zeros_like(a[:, 0])
        return self.bag(a)[0] + 2 * self.bag(b)[0], zero + a.size(0), zero + a.size(1) + b.size(1)

    def reference(self, a: list[list[int]], b: list[list[int]]) -> torch.Tensor:
        return self.bag.reference(a) + 2 * self.bag.reference(b)


class Features(torch.nn.Module):
    """[rows, F] float32 -> [rows, 2]: for gathered Arrow columns."""

    def __init__(self, features: int) -> None:
        super().__init__()
        _seeded(4)
        self.lin = torch.nn.Linear(features, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin(x)


class NegativeRaises(torch.nn.Module):
    """Raises for a batch with a negative value; scripted (a trace drops the branch)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if bool((x < 0).any()):
            raise ValueError("negative input")
        return x * 2 + 1


class FirstRow(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:1]


class SumRows(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.sum(0, keepdim=True)


class Slow(torch.nn.Module):
    """[rows, 256] -> [rows, 256] after 24 matmuls: about a second for 4096 rows."""

    def __init__(self) -> None:
        super().__init__()
        _seeded(5)
        self.w = torch.nn.Parameter(torch.randn(256, 256) / 16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for _ in range(24):
            x = torch.tanh(x @ self.w)
        return x


# The models below run more than this many rows as out of memory.
OOM_ROWS = 5


class OomAbove(torch.nn.Module):
    """``inner`` behind ``torch.ops.torchspark_test.oom_above(x, OOM_ROWS)``: a
    call with more than OOM_ROWS rows raises c10::OutOfMemoryError inside the
    TorchScript model, as an allocator would (the op library must be loaded:
    the ``test_ops`` fixture); otherwise the same outputs as ``inner``."""

    def __init__(self, inner: torch.nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor):
        return self.inner(torch.ops.torchspark_test.oom_above(x, OOM_ROWS))


def _trace(module: torch.nn.Module, *examples: torch.Tensor) -> Callable[[str], None]:
    return lambda path: torchspark.export(module, examples, path)


def _script(module: torch.nn.Module) -> Callable[[str], None]:
    def save(path: str) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # torch.jit is deprecated
            torch.jit.save(torch.jit.script(module.eval()), path)

    return save


def _builders() -> dict[str, tuple[torch.nn.Module, Callable[[str], None]]]:
    x = torch.randn(4, FEATURES)
    ids = torch.arange(8, dtype=torch.long).view(4, 2)
    tokens = torch.randint(0, VOCAB, (4, 6))
    mlp, two, tup, rows, bag = MLP(), TwoInput(), TupleOut(), Rows(), Bag()
    identity, tokens_dense, per_token = Identity(), TokensAndDense(), PerToken()
    two_texts = TwoTexts()
    feat3, feat5, slow = Features(3), Features(5), Slow()
    neg, first, sums, dict_out = NegativeRaises(), FirstRow(), SumRows(), DictOut()
    return {
        "mlp": (mlp, _trace(mlp, x)),
        "two_input": (two, _trace(two, x, torch.randn(4, 3))),
        "tuple_out": (tup, _trace(tup, x)),
        "dict_out": (dict_out, _script(dict_out)),
        "rows": (rows, _trace(rows, ids)),
        "bag": (bag, _trace(bag, tokens)),
        "per_token": (per_token, _trace(per_token, tokens)),
        "identity": (identity, _trace(identity, x)),
        "tokens_dense": (tokens_dense, _trace(tokens_dense, torch.randn(4, 3), tokens)),
        "two_texts": (two_texts, _trace(two_texts, tokens, tokens[:, :4])),
        "features3": (feat3, _trace(feat3, torch.randn(4, 3))),
        "features5": (feat5, _trace(feat5, torch.randn(4, 5))),
        "negative_raises": (neg, _script(neg)),
        "first_row": (first, _trace(first, x)),
        "sum_rows": (sums, _trace(sums, x)),
        "slow": (slow, _trace(slow, torch.randn(4, 256))),
        # Traced with 4 rows (<= OOM_ROWS): the archive calls the op.
        "oom_rows": (OomAbove(rows), _trace(OomAbove(rows), ids)),
        "oom_mlp": (OomAbove(mlp), _trace(OomAbove(mlp), x)),
    }


class ModelFiles:
    """Exports each model once into ``directory``; ``path(name)`` and
    ``module(name)`` give the file and the eager module it was made from."""

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.directory = os.fspath(directory)
        self._builders = _builders()
        self._paths: dict[str, str] = {}
        self._lock = threading.Lock()

    def module(self, name: str) -> torch.nn.Module:
        return self._builders[name][0].eval()

    def path(self, name: str) -> str:
        with self._lock:
            if name not in self._paths:
                path = os.path.join(self.directory, f"{name}.pt")
                self._builders[name][1](path)
                self._paths[name] = path
            return self._paths[name]

    def aoti(self, name: str, example: torch.Tensor, precision: str | None = None) -> str:
        """An AOTInductor package of ``name`` (15-30 s each: use sparingly)."""
        key = f"{name}.{precision or 'fp32'}.pt2"
        with self._lock:
            if key not in self._paths:
                path = os.path.join(self.directory, key)
                torchspark.export(
                    self.module(name), (example,), path, format="aoti", precision=precision
                )
                self._paths[key] = path
            return self._paths[key]
