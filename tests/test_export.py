"""torchspark.export: an exported model never silently computes something else
than its module; modules are accepted wherever a model file is (Engine here,
the Spark functions in test_spark.py)."""

from __future__ import annotations

import os
import re
import warnings

import pytest
import torch

import torchspark
from torchspark.export import export_cached, module_digest


class Branch(torch.nn.Module):
    """A data-dependent branch: a trace bakes in the path its example took."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[0] > 4 and bool(x.mean() > 0):
            return x.sum(1) * 2
        return x.sum(1) * -4


class Raises(torch.nn.Module):
    """A Python-side raise on a tensor's value: a trace drops the check."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if bool((x < 0).any()):
            raise ValueError("negative input")
        return x * 2


class Noisy(torch.nn.Module):
    """No trace warning, but an export can never reproduce it: random noise."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + torch.rand_like(x)


class Scaled(torch.nn.Module):
    """A plain attribute (not a parameter) changes what it computes."""

    def __init__(self, scale: float) -> None:
        super().__init__()
        self.scale = scale
        torch.manual_seed(0)
        self.lin = torch.nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin(x) * self.scale


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCHSPARK_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_the_silent_branch_is_refused_naming_the_line(tmp_path):
    x = torch.ones(8, 4)
    # What used to happen: eager and the trace disagree on a batch the example did not show.
    assert Branch()(-x[:2]).tolist() == [16.0, 16.0]
    with pytest.raises(torchspark.ExportError) as info:
        torchspark.export(Branch(), x, tmp_path / "branch.pt")
    message = str(info.value)
    assert f"{__file__}:" in message and "bool(x.mean() > 0)" in message
    assert "torch.jit.script" in message and "format='aoti'" in message
    assert "verify=False" in message


def test_a_python_side_raise_is_refused(tmp_path):
    with pytest.raises(torchspark.ExportError, match=r"bool\(\(x < 0\)\.any\(\)\)"):
        torchspark.export(Raises(), torch.ones(4, 3), tmp_path / "raises.pt")


def test_verify_false_exports_the_trace_as_it_is(tmp_path):
    x = torch.ones(8, 4)
    with pytest.warns(torch.jit.TracerWarning):
        path = torchspark.export(Branch(), x, tmp_path / "branch.pt", verify=False)
    traced = torch.jit.load(path)
    assert traced(-x[:2]).tolist() == [-8.0, -8.0]  # the baked-in branch, as asked


def test_a_scripted_module_exports_with_its_branches(tmp_path):
    scripted = torch.jit.script(Branch())
    path = torchspark.export(scripted, torch.ones(8, 4), tmp_path / "scripted.pt")
    with torchspark.Engine(path, batch_size=16) as engine:
        for x in (torch.ones(8, 4), -torch.ones(2, 4), torch.randn(6, 4)):
            torch.testing.assert_close(engine.run(x), Branch()(x), rtol=0, atol=0)


def test_outputs_that_differ_without_a_warning_are_caught(tmp_path):
    with pytest.raises(torchspark.ExportError) as info:
        torchspark.export(Noisy(), torch.zeros(8, 4), tmp_path / "noisy.pt")
    message = str(info.value)
    assert "output 0 on the example inputs (8 rows)" in message
    match = re.search(r"max \|difference\| ([0-9.e-]+)", message)
    assert match and float(match.group(1)) > 1e-3


class BakesLength(torch.nn.Module):
    """Token ids whose sequence length a trace bakes in (a Python int), with
    the tracer's warning swallowed inside, as libraries that filter warnings do."""

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            n = int(ids.shape[1])
        return (ids * mask).float().sum(1) + torch.arange(n).float().mean()


class Pools(torch.nn.Module):
    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return (ids * mask).float().mean(1)


def test_a_silently_baked_sequence_length_is_caught_at_another_length(tmp_path):
    ids = torch.randint(1, 50, (4, 10))
    mask = torch.ones_like(ids)
    # Every batch size agrees at length 10; the cut to 5 tokens does not.
    with pytest.raises(
        torchspark.ExportError, match=r"on the example cut to 5 of its 10 tokens \(dim 1\)"
    ):
        torchspark.export(BakesLength(), (ids, mask), tmp_path / "baked.pt")
    # A module whose length is not baked in passes the same check.
    path = torchspark.export(Pools(), (ids, mask), tmp_path / "pools.pt")
    short = (ids[:, :3], mask[:, :3])
    with torch.no_grad():
        torch.testing.assert_close(torch.jit.load(path)(*short), Pools()(*short))


def test_a_correct_export_passes_and_matches_eager(tmp_path):
    torch.manual_seed(3)
    module = torch.nn.Sequential(torch.nn.Linear(5, 7), torch.nn.GELU(), torch.nn.Linear(7, 2))
    path = torchspark.export(module, torch.randn(6, 5), tmp_path / "mlp.pt")
    x = torch.randn(33, 5)
    with torch.no_grad():
        expected = module(x)
    with torchspark.Engine(path, batch_size=8) as engine:
        torch.testing.assert_close(engine.run(x), expected)


def test_a_function_is_not_a_model(tmp_path):
    def score(x: torch.Tensor) -> torch.Tensor:
        return x.sum(1)

    with pytest.raises(TypeError, match=r"nn\.Module or the path of an exported model.*'.*score'"):
        torchspark.export(score, torch.ones(2, 2), tmp_path / "f.pt")
    with pytest.raises(TypeError, match=r"Engine: expected a torch\.nn\.Module or the path"):
        torchspark.Engine(score)


def test_engine_takes_a_module_with_an_example(cache):
    module = Scaled(3.0)
    with pytest.raises(TypeError, match=r"Scaled module needs example="):
        torchspark.Engine(module)
    x = torch.randn(10, 4)
    with torchspark.Engine(module, example=x[:4], batch_size=4) as engine, torch.no_grad():
        torch.testing.assert_close(engine.run(x), module(x))
    assert len(os.listdir(cache / "exports")) == 1


def test_export_cache_is_keyed_by_everything_that_changes_the_result(cache):
    x = torch.randn(4, 4)
    first = export_cached(Scaled(3.0), x)
    assert export_cached(Scaled(3.0), x) == first  # same code, weights, attributes: reused
    assert export_cached(Scaled(2.0), x) != first  # a plain attribute
    changed = Scaled(3.0)
    with torch.no_grad():
        changed.lin.weight[0, 0] += 1e-3
    assert export_cached(changed, x) != first  # a weight
    assert export_cached(Scaled(3.0), x.double().float()[:, :4]) == first
    assert module_digest(Scaled(3.0), [x.double()], "torchscript", None) != module_digest(
        Scaled(3.0), [x], "torchscript", None
    )  # the example's dtype
    assert module_digest(Scaled(3.0), [x], "aoti", None) != module_digest(
        Scaled(3.0), [x], "torchscript", None
    )
    # Each file computes what its module does.
    for module in (Scaled(3.0), Scaled(2.0), changed):
        loaded = torch.jit.load(export_cached(module, x))
        with torch.no_grad():
            torch.testing.assert_close(loaded(x), module(x), rtol=0, atol=0)


def test_aoti_refuses_the_branch_with_torch_export_message(tmp_path):
    with pytest.raises(Exception, match=r"(?i)data.dependent|guard"):
        torchspark.export(Branch(), torch.ones(8, 4), tmp_path / "branch.pt2", format="aoti")
