"""The package itself: public API, build metadata, the torch version guard, the demo."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

import torchspark


def test_public_api_is_small_and_documented():
    expected = {
        "ArrowPredictor",
        "BadRowsError",
        "Engine",
        "EngineClosedError",
        "ExportError",
        "Future",
        "Input",
        "InvalidArrowError",
        "ModelError",
        "NullValueError",
        "Report",
        "ResumeError",
        "TorchSparkError",
        "UnsupportedTypeError",
        "__version__",
        "arrow_predictor",
        "doctor",
        "export",
        "from_tensor",
        "gather",
        "last_report",
        "pad",
        "predict",
        "predict_to",
        "to_batch",
        "to_tensor",
        "to_tensors",
        "torch_udf",
    }
    assert set(torchspark.__all__) == expected
    for name in expected - {"__version__"}:
        obj = getattr(torchspark, name)
        assert obj.__doc__ and len(obj.__doc__) > 40, name


def test_error_hierarchy():
    assert issubclass(torchspark.UnsupportedTypeError, TypeError)
    assert issubclass(torchspark.InvalidArrowError, ValueError)
    assert issubclass(torchspark.NullValueError, ValueError)
    assert issubclass(torchspark.ModelError, RuntimeError)
    assert issubclass(torchspark.EngineClosedError, RuntimeError)
    assert issubclass(torchspark.ExportError, RuntimeError)
    assert issubclass(torchspark.ResumeError, ValueError)
    for cls in (
        torchspark.UnsupportedTypeError,
        torchspark.InvalidArrowError,
        torchspark.NullValueError,
        torchspark.ModelError,
        torchspark.EngineClosedError,
        torchspark.ExportError,
        torchspark.ResumeError,
    ):
        assert issubclass(cls, torchspark.TorchSparkError)


def test_records_the_torch_it_was_built_against():
    from torchspark import _build_info

    assert _build_info.TORCH_VERSION == torchspark._C.TORCH_VERSION
    assert _build_info.TORCH_VERSION.split("+")[0] == torch.__version__.split("+")[0]


def test_refuses_another_torch_version(tmp_path):
    # A fake `torch` earlier on sys.path reports another release: the import
    # must stop before the extension is loaded, with the command that fixes it.
    fake = tmp_path / "torch"
    fake.mkdir()
    (fake / "__init__.py").write_text("__version__ = '2.99.1+cu130'\n")
    code = "import torchspark"
    env = dict(os.environ, PYTHONPATH=str(tmp_path))
    result = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=False
    )
    assert result.returncode != 0
    built = torchspark._build_info.TORCH_VERSION
    tag = "pt" + built.split("+")[0].replace(".", "")
    assert f"ImportError: torchspark 0.1.0+{tag} was built against torch {built}" in result.stderr
    assert "but torch 2.99.1+cu130 is installed" in result.stderr
    assert '    pip install "torchspark==0.1.0+pt2991"\n' in result.stderr
    assert (
        "    pip install --no-build-isolation --no-deps --force-reinstall torchspark-0.1.0.tar.gz"
        in result.stderr
    )


def test_same_release_of_another_variant_is_accepted():
    from torchspark._torch_release import check_installed_torch

    check_installed_torch("0.1.0", "2.14.1+cu130", "2.14.1+cpu")
    check_installed_torch("0.1.0", "2.13.0+cpu", "2.13.0")
    with pytest.raises(ImportError, match=r"torchspark==0\.1\.0\+pt2141"):
        check_installed_torch("0.1.0", "2.13.0+cpu", "2.14.1")


def test_build_metadata_pins_the_build_torch(monkeypatch):
    # The build's dynamic-metadata provider (pyproject.toml), fed a torch version.
    from torchspark import _torch_release

    settings = {"version": "0.1.0", "dependencies": ["pyarrow>=15"]}
    monkeypatch.setattr(_torch_release, "_installed_torch_version", lambda: "2.14.1+cu130")
    provider = _torch_release.TorchRelease()
    provider.build_state("wheel")
    assert provider.dynamic_metadata(settings, {}) == {
        "version": "0.1.0+pt2141",
        "dependencies": ["torch==2.14.1", "pyarrow>=15"],
    }
    provider.build_state("sdist")
    assert provider.dynamic_metadata(settings, {}) == {
        "version": "0.1.0",
        "dependencies": ["torch", "pyarrow>=15"],
    }
    with pytest.raises(ValueError, match=r"expected a release X\.Y\.Z"):
        _torch_release.local_tag("nightly")


def test_docstring_examples_run():
    import doctest

    import torchspark.arrow

    failures, tried = doctest.testmod(torchspark.arrow, verbose=False)
    assert tried >= 10 and failures == 0
    failures, tried = doctest.testmod(torchspark, verbose=False)
    assert tried >= 1 and failures == 0
    for name in ("torchspark.engine", "torchspark.export"):
        module = sys.modules[name]  # torchspark.export is also the function's name
        failures, tried = doctest.testmod(module, verbose=False)
        assert tried >= 1 and failures == 0, name


@pytest.mark.slow
@pytest.mark.spark
def test_demo_runs_end_to_end(tmp_path):
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "torchspark.demo",
            "--task",
            "tabular",
            "--rows",
            "20000",
            "--workdir",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        check=False,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "OK: every prediction matches eager PyTorch" in result.stdout
    assert "predict_batch_udf" in result.stdout and "rows/s" in result.stdout
    assert "p50" in result.stdout and "p99" in result.stdout
    import pyarrow.parquet as pq

    out = pq.read_table(tmp_path / "predictions.parquet").sort_by("id")
    assert out.num_rows == 20000
    assert out.column("id").to_pylist() == list(range(20000))
