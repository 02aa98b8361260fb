"""Shared test set-up: torchspark must be importable (the installed wheel in CI)."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import numpy as np
import pytest


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)


@pytest.fixture(scope="module")
def fast_gc() -> Iterator[None]:
    """For modules that call gc.collect() in most tests: freezing what exists
    before them (torch, pyarrow, ...) makes it cheap. Objects the tests create
    are still collected."""
    gc.collect()
    gc.freeze()
    yield
    gc.unfreeze()
