"""Shared pytest setup. Keep each section short; add new fixtures under their own header."""

from __future__ import annotations

import os

# ---------------------------------------------------------------- BLAS threads
# The spec's matrices are small (at most 576 × 576); OpenBLAS threads only spin against
# each other there, and on a shared 2-core runner a threaded QR runs several times slower
# than a single-threaded one. Set before NumPy is first imported; override from outside.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
# Under pytest-xdist (`-n 2`, the README's command) each worker is one of two processes on
# two cores: torch's OpenMP pool gets one thread too, or the workers oversubscribe the cores.
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ.setdefault("OMP_NUM_THREADS", "1")

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


def pytest_configure(config):
    # xdist's loadgroup re-sorts work units by size (biggest group first) unless told not to,
    # which would start the slow one-test units last; _schedule_for_two_workers orders them.
    if getattr(config.option, "dist", "no") == "loadgroup":
        config.option.loadscopereorder = False


@pytest.hookimpl(tryfirst=True)  # before pytest-xdist reads the xdist_group marks
def pytest_collection_modifyitems(config, items):
    for item in items:
        if "smollm2" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.slow)
    # In a worker xdist has set dist to "no" and says loadgroup by an option of its own.
    if config.getoption("dist", "no") == "loadgroup" or getattr(config.option, "loadgroup", False):
        _schedule_for_two_workers(items)


# ---------------------------------------------------------------- pytest-xdist: what runs where
# `pytest -n 2 --dist loadgroup` hands out work units in collection order, each worker taking
# the next when it has at most 2 tests left. A unit is one test, or the tests of a module that
# share a module-scoped fixture (built once, on one worker: e.g. test_distributed's one
# 2-process launch). The slow tests go first, one unit each, the longest (by their
# `seconds` hint) first: they start at once, one on each worker, instead of ending last on
# one; the short tests then fill in around them.
CHEAP_MODULE_FIXTURES = {"one_thread"}


def _shares_a_module_fixture(item) -> bool:
    defs = getattr(getattr(item, "_fixtureinfo", None), "name2fixturedefs", {})
    return any(d.scope in ("module", "package") for name, ds in defs.items()
               if name not in CHEAP_MODULE_FIXTURES for d in ds)


def _seconds(item) -> float:
    """A slow test's cost hint, `@pytest.mark.slow(seconds=N)` (on one core; 0 when unset)."""
    return max((m.kwargs.get("seconds", 0) for m in item.iter_markers("slow")), default=0)


def _schedule_for_two_workers(items) -> None:
    slow = sorted((i for i in items if i.get_closest_marker("slow")), key=lambda i: -_seconds(i))
    rest = [i for i in items if not i.get_closest_marker("slow")]
    for item in rest:
        if not item.get_closest_marker("xdist_group") and _shares_a_module_fixture(item):
            item.add_marker(pytest.mark.xdist_group(item.nodeid.split("::")[0]))
    # xdist keeps queueing units on a worker until more than 2 of its tests are pending, so
    # each of the two longest tests gets two units queued behind it before anything waits for
    # a free worker: make those four quick single tests, not the next slow ones.
    quick = [i for i in rest if not i.get_closest_marker("xdist_group")][:4]
    rest = [i for i in rest if i not in quick]
    items[:] = slow[:2] + quick + slow[2:] + rest


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
