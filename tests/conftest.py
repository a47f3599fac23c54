"""Shared pytest setup. Keep each section short; add new fixtures under their own header."""

from __future__ import annotations

import os

# ---------------------------------------------------------------- BLAS threads
# The spec's matrices are small (at most 576 × 576); OpenBLAS threads only spin against
# each other there, and on a shared 2-core runner a threaded QR runs several times slower
# than a single-threaded one. Set before NumPy is first imported; override from outside.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import pytest
from hypothesis import HealthCheck, settings

# ---------------------------------------------------------------- hypothesis profiles
# "ci" (the default): derandomized, so every run draws the same examples and a failure
# reproduces on any machine; no deadline (a d = 576 SVD is slow on a busy runner);
# print_blob so a failure also prints the @reproduce_failure line.
# "dev": random draws and more of them, for hunting new counterexamples locally:
#     HYPOTHESIS_PROFILE=dev python3 -m pytest tests/
settings.register_profile(
    "ci",
    derandomize=True,
    max_examples=50,
    deadline=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile(
    "dev",
    max_examples=300,
    deadline=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

# ---------------------------------------------------------------- slow: the real model
# Every test that takes the real SmolLM2 (the `smollm2` fixture of tests/_real_model.py) is
# slow, marked here so that a new one cannot be forgotten: `pytest -m "not slow"` skips them.


def pytest_collection_modifyitems(config, items):
    for item in items:
        if "smollm2" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="module")
def one_thread():
    """torch on one thread for a module's tests, restored afterwards. Tiny matrices: extra
    intra-op threads only spin against each other (and against other processes on a shared
    runner, where a step then runs ~50x slower). Opt in with
    `pytestmark = pytest.mark.usefixtures("one_thread")`."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
