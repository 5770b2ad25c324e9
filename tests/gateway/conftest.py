"""Fixtures of the gateway tests (helpers live in gateway_helpers.py)."""

import numpy as np
import pytest


@pytest.fixture
def rng():
    return np.random.default_rng(0)
