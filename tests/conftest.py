"""Shared test set-up: torchspark must be importable (the installed wheel in CI)."""

from __future__ import annotations

import numpy as np
import pytest


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)
