"""Adapter files get the permissions of any file the user creates (0o666 & ~umask; the folder
0o777 & ~umask): the safetensors writer alone would leave the weights owner-only."""

from __future__ import annotations

import os
import stat

import numpy as np
import pytest

from minireft import ReftConfig, io, loreft

CONFIG = ReftConfig(layers=[1], rank=2, positions="l1", dtype="float64")


def _params(d: int = 6) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {f"1.{group}.{name}": value for group in CONFIG.groups
            for name, value in loreft.init(d, CONFIG.rank, rng, dtype=CONFIG.dtype).items()}


@pytest.fixture
def umask():
    """Set the process umask for one test, restored after it."""
    old = os.umask(0o022)
    os.umask(old)
    yield os.umask
    os.umask(old)


@pytest.mark.parametrize("mask", [0o022, 0o002, 0o077])
def test_adapter_files_honour_the_umask(tmp_path, umask, mask):
    umask(mask)
    reference = tmp_path / "plain.txt"
    reference.write_text("a file the user writes")  # what open() gives under this umask
    path = io.save_adapter(tmp_path / "adapter", CONFIG, _params(), extra_files={"head.bin": b"x"})
    want_file = stat.S_IMODE(reference.stat().st_mode)
    assert want_file == 0o666 & ~mask
    for name in (io.CONFIG_FILE, io.WEIGHTS_FILE, "head.bin"):
        assert stat.S_IMODE((path / name).stat().st_mode) == want_file, name
    assert stat.S_IMODE(path.stat().st_mode) == 0o777 & ~mask
    assert io.umask_modes() == (0o666 & ~mask, 0o777 & ~mask)
    assert os.umask(mask) == mask  # reading the umask left it as it was


def test_replacing_an_adapter_keeps_the_umask_modes(tmp_path, umask):
    umask(0o022)
    path = io.save_adapter(tmp_path / "adapter", CONFIG, _params())
    umask(0o002)  # a later save under another umask: the new files follow the new umask
    io.save_adapter(path, CONFIG, _params())
    assert stat.S_IMODE((path / io.WEIGHTS_FILE).stat().st_mode) == 0o664
    assert stat.S_IMODE(path.stat().st_mode) == 0o775
