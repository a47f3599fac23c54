"""Adapter folders: a bit-identical round trip, a clear error for each bad file, atomic saves."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from minireft import SPEC_VERSION, ReftConfig, direft, io, loreft
from minireft.io import CONFIG_FILE, WEIGHTS_FILE, AdapterError, load_adapter, save_adapter

D = 6


def make(config: ReftConfig, seed: int = 0, d: int = D) -> dict[str, np.ndarray]:
    """Valid params for every tensor the config names, from the spec's init."""
    rng = np.random.default_rng(seed)
    spec = {"loreft": loreft, "direft": direft}[config.intervention]
    params = {}
    for layer in config.layers:
        for group in config.groups:
            for name, value in spec.init(d, config.rank, rng, kind=config.init, dtype=config.dtype).items():
                params[f"{layer}.{group}.{name}"] = value
    return params


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under folder, relative path → bytes."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


CONFIG = ReftConfig(layers=[0, 2], rank=2, positions="f1+l1", tied=False, dtype="float64")


@pytest.fixture
def saved(tmp_path):
    """A valid float64 LoReFT adapter at tmp_path / "adapter"."""
    path = tmp_path / "adapter"
    save_adapter(path, CONFIG, make(CONFIG), base_model="tiny-test")
    return path


# ---------------------------------------------------------------- round trip

ROUND_TRIP = [
    ReftConfig(layers=[0, 2], rank=2, positions="f1+l1", tied=False, dtype="float64"),
    ReftConfig(layers=[1], rank=3, positions="f7+l7", tied=True, dtype="float32"),
    ReftConfig(layers=[0], rank=1, positions="f0+l3", tied=False, dtype="float32", init="identity"),
    ReftConfig(layers=[5, 3], rank=D, positions="l2", intervention="direft", dtype="float64", dropout=0.05),
    ReftConfig(layers=[4], rank=2, positions="f2", intervention="direft", dtype="float32", module_path="model.layers"),
]


@pytest.mark.parametrize("config", ROUND_TRIP, ids=lambda c: f"{c.intervention}-{c.dtype}-{c.positions}-tied{c.tied}")
def test_round_trip_is_bit_identical(tmp_path, config):
    params = make(config)
    save_adapter(tmp_path / "a", config, params, base_model="tiny")
    loaded_config, loaded = load_adapter(tmp_path / "a")
    assert loaded_config == config
    assert sorted(loaded) == sorted(params) == sorted(config.tensor_shapes(D))
    for name, value in params.items():
        got = loaded[name]
        assert got.dtype == value.dtype and got.shape == value.shape, name
        assert got.tobytes() == value.tobytes(), f"{name} changed in the round trip"
    meta = json.loads((tmp_path / "a" / CONFIG_FILE).read_text())
    assert meta["hidden_size"] == D and meta["spec_version"] == SPEC_VERSION and meta["base_model"] == "tiny"
    assert set(os.listdir(tmp_path / "a")) == {CONFIG_FILE, WEIGHTS_FILE}


def test_saving_is_deterministic(tmp_path):
    """The same adapter saved twice gives the same bytes (no timestamps, sorted keys)."""
    params = make(CONFIG)
    save_adapter(tmp_path / "a", CONFIG, params)
    save_adapter(tmp_path / "b", CONFIG, params)
    assert snapshot(tmp_path / "a") == snapshot(tmp_path / "b")


def test_saving_over_an_adapter_replaces_it(tmp_path, saved):
    params = make(CONFIG, seed=9)
    save_adapter(saved, CONFIG, params)
    _, loaded = load_adapter(saved)
    assert all(loaded[k].tobytes() == v.tobytes() for k, v in params.items())
    assert os.listdir(tmp_path) == ["adapter"]


# ---------------------------------------------------------------- bad files


def rewrite_config(path: Path, **changes) -> None:
    meta = json.loads((path / CONFIG_FILE).read_text()) | changes
    (path / CONFIG_FILE).write_text(json.dumps(meta))


def rewrite_tensor(path: Path, name: str, value: np.ndarray) -> None:
    tensors = load_file(str(path / WEIGHTS_FILE)) | {name: value}
    save_file(tensors, str(path / WEIGHTS_FILE))


def test_missing_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"no adapter folder at .*nowhere"):
        load_adapter(tmp_path / "nowhere")


def test_folder_without_config(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=r"has no reft_config.json; is it an adapter folder"):
        load_adapter(tmp_path / "empty")


def test_missing_weights_file(saved):
    (saved / WEIGHTS_FILE).unlink()
    with pytest.raises(FileNotFoundError, match=r"has no reft_model.safetensors"):
        load_adapter(saved)


@pytest.mark.parametrize("version", ["2.0", "1.2", "1.1.1", "0.9", "one", None, 1.1])
def test_wrong_spec_version(saved, version):
    """A different major version, or a newer one (minor or patch), is refused; so is a malformed one."""
    rewrite_config(saved, spec_version=version)
    with pytest.raises(AdapterError, match=r"has spec_version .*; this minireft reads spec 1.1 \(same major version, not newer\)"):
        load_adapter(saved)


def test_an_adapter_of_an_older_minor_version_loads(saved):
    """Spec 1.1 only adds to 1.0: an adapter written under 1.0 (before the family, the edit
    function and prompt_format existed) loads with the same config and tensors."""
    config, params = load_adapter(saved)
    rewrite_config(saved, spec_version="1.0")
    old_config, old_params = load_adapter(saved)
    assert old_config == config and params.keys() == old_params.keys()
    for name, value in params.items():
        np.testing.assert_array_equal(old_params[name], value)


def test_missing_spec_version(saved):
    meta = json.loads((saved / CONFIG_FILE).read_text())
    del meta["spec_version"]
    (saved / CONFIG_FILE).write_text(json.dumps(meta))
    with pytest.raises(AdapterError, match=r"has spec_version None"):
        load_adapter(saved)


def test_config_that_is_not_json(saved):
    (saved / CONFIG_FILE).write_text("{ not json")
    with pytest.raises(AdapterError, match=r"reft_config.json is not valid JSON"):
        load_adapter(saved)


def test_unknown_config_field(saved):
    rewrite_config(saved, learning_rate=0.1)
    with pytest.raises(ValueError, match=r"unknown ReftConfig field\(s\) \['learning_rate'\]"):
        load_adapter(saved)


def test_missing_hidden_size(saved):
    meta = json.loads((saved / CONFIG_FILE).read_text())
    del meta["hidden_size"]
    (saved / CONFIG_FILE).write_text(json.dumps(meta))
    with pytest.raises(AdapterError, match=r"has no 'hidden_size' field"):
        load_adapter(saved)


def test_tensor_shape_disagrees_with_the_config(saved):
    rewrite_tensor(saved, "2.suffix.W", np.zeros((2, D + 1)))
    with pytest.raises(AdapterError, match=r"tensor 2.suffix.W has shape \(2, 7\), but the config \(rank=2\) and hidden size 6 give \(2, 6\)"):
        load_adapter(saved)


def test_config_rank_disagrees_with_the_tensors(saved):
    rewrite_config(saved, rank=3)
    with pytest.raises(AdapterError, match=r"has shape \(2, 6\), but the config \(rank=3\) and hidden size 6 give \(3, 6\)"):
        load_adapter(saved)


def test_tensor_dtype_disagrees_with_the_config(saved):
    rewrite_config(saved, dtype="float32")
    with pytest.raises(AdapterError, match=r"has dtype float64, but config.dtype is float32"):
        load_adapter(saved)


def test_missing_and_unexpected_tensors(saved):
    tensors = load_file(str(saved / WEIGHTS_FILE))
    tensors["9.tied.R"] = tensors.pop("0.prefix.b")
    save_file(tensors, str(saved / WEIGHTS_FILE))
    with pytest.raises(AdapterError, match=r"missing \['0.prefix.b'\], unexpected \['9.tied.R'\]"):
        load_adapter(saved)


def test_non_orthonormal_R(saved):
    R = load_file(str(saved / WEIGHTS_FILE))["0.prefix.R"]
    rewrite_tensor(saved, "0.prefix.R", 1.001 * R)
    with pytest.raises(AdapterError, match=r"tensor 0.prefix.R is not orthonormal: max\|RRᵀ − I\| = 2.00\de-03"):
        load_adapter(saved)


def test_non_finite_tensor(saved):
    W = load_file(str(saved / WEIGHTS_FILE))["0.suffix.W"]
    W[1, 2] = np.nan
    rewrite_tensor(saved, "0.suffix.W", W)
    with pytest.raises(ValueError, match=r"0.suffix.W must be finite, found nan at index \(1, 2\)"):
        load_adapter(saved)


@pytest.mark.parametrize("keep", [0, 5, 100, -8])
def test_truncated_safetensors(saved, keep):
    data = (saved / WEIGHTS_FILE).read_bytes()
    (saved / WEIGHTS_FILE).write_bytes(data[:keep])  # keep = -8: all but the last 8 bytes
    with pytest.raises(AdapterError, match=r"reft_model.safetensors cannot be read \(truncated or corrupt\?\)"):
        load_adapter(saved)


# ---------------------------------------------------------------- atomic saves


def bad_R_params() -> dict[str, np.ndarray]:
    params = make(CONFIG, seed=1)
    params["2.prefix.R"] = params["2.prefix.R"] * 1.5
    return params


def test_a_failed_save_leaves_the_existing_adapter_untouched(tmp_path, saved):
    before = snapshot(saved)
    with pytest.raises(AdapterError, match=r"tensor 2.prefix.R is not orthonormal"):
        save_adapter(saved, CONFIG, bad_R_params())
    assert snapshot(saved) == before
    assert os.listdir(tmp_path) == ["adapter"], "a temporary folder was left behind"
    load_adapter(saved)


@pytest.mark.parametrize("params, exc, match", [
    (bad_R_params(), AdapterError, r"not orthonormal"),
    (make(CONFIG) | {"0.prefix.W": np.zeros((2, D), np.float32)}, AdapterError, r"0.prefix.W has dtype float32, but config.dtype is float64"),
    (make(CONFIG) | {"0.prefix.W": np.full((2, D), np.inf)}, ValueError, r"0.prefix.W must be finite"),
    (make(CONFIG) | {"0.prefix.W": [[0.0] * D] * 2}, TypeError, r"0.prefix.W must be a numpy.ndarray, got list"),
    ({k: v for k, v in make(CONFIG).items() if k != "2.suffix.b"}, AdapterError, r"missing \['2.suffix.b'\]"),
    (make(CONFIG) | {"0.tied.R": np.eye(2, D)}, AdapterError, r"unexpected \['0.tied.R'\]"),
])
def test_invalid_params_are_refused_before_anything_is_written(tmp_path, params, exc, match):
    with pytest.raises(exc, match=match):
        save_adapter(tmp_path / "new", CONFIG, params)
    assert os.listdir(tmp_path) == []


def test_a_failure_while_writing_leaves_no_trace(tmp_path, saved, monkeypatch):
    """The weights writer dies half way: the old adapter stays, the temporary folder goes."""
    before = snapshot(saved)

    def dies(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(io, "save_file", dies)
    with pytest.raises(OSError, match="disk full"):
        save_adapter(saved, CONFIG, make(CONFIG, seed=3))
    assert snapshot(saved) == before
    assert os.listdir(tmp_path) == ["adapter"]


def test_a_failure_during_the_swap_restores_the_old_adapter(tmp_path, saved, monkeypatch):
    """os.replace(tmp, path) fails after the old adapter was moved aside: it is moved back."""
    before = snapshot(saved)
    real_replace, calls = os.replace, []

    def replace(src, dst):
        calls.append((Path(src).name, Path(dst).name))
        if len(calls) == 2:  # 1: path → .old, 2: tmp → path (fails), 3: .old → path
            raise OSError("rename failed")
        return real_replace(src, dst)

    monkeypatch.setattr(io.os, "replace", replace)
    with pytest.raises(OSError, match="rename failed"):
        save_adapter(saved, CONFIG, make(CONFIG, seed=4))
    monkeypatch.undo()
    assert len(calls) == 3
    assert snapshot(saved) == before
    assert os.listdir(tmp_path) == ["adapter"]


def test_refuses_to_overwrite_something_that_is_not_an_adapter(tmp_path):
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "todo.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match=r"exists and is not an adapter folder"):
        save_adapter(tmp_path / "notes", CONFIG, make(CONFIG))
    assert (tmp_path / "notes" / "todo.txt").read_text() == "keep me"
    (tmp_path / "empty").mkdir()
    save_adapter(tmp_path / "empty", CONFIG, make(CONFIG))  # an empty folder is fine
    load_adapter(tmp_path / "empty")


def test_extra_files_land_in_the_same_atomic_write(tmp_path):
    config = ReftConfig(layers=[0], rank=2, positions="l1")
    path = save_adapter(tmp_path / "a", config, make(config), extra_files={"head.bin": b"\x01\x02"})
    assert (path / "head.bin").read_bytes() == b"\x01\x02"
    load_adapter(path)  # extra files do not disturb loading


@pytest.mark.parametrize("name", [CONFIG_FILE, WEIGHTS_FILE, "../escape", "sub/file", ".hidden"])
def test_extra_files_refuse_names_that_clash_or_escape(tmp_path, name):
    config = ReftConfig(layers=[0], rank=2, positions="l1")
    with pytest.raises(ValueError, match="plain file name"):
        save_adapter(tmp_path / "a", config, make(config), extra_files={name: b""})
    assert not (tmp_path / "a").exists()


# ---------------------------------------------------------------- prompt format, run folders


def test_prompt_format_is_stored_and_does_not_disturb_loading(tmp_path, saved):
    fmt = {"chat_template": True, "chat_template_sha256": "ab" * 32}
    path = save_adapter(tmp_path / "a", CONFIG, make(CONFIG), prompt_format=fmt)
    meta = json.loads((path / CONFIG_FILE).read_text())
    assert meta["prompt_format"] == fmt and io.read_meta(path)["prompt_format"] == fmt
    config, params = load_adapter(path)
    assert config == CONFIG and all(np.array_equal(params[k], v) for k, v in make(CONFIG).items())
    assert "prompt_format" not in json.loads((saved / CONFIG_FILE).read_text()), "written when None"


def test_check_output(tmp_path, saved):
    io.check_output(tmp_path / "new")  # missing: fine
    (tmp_path / "empty").mkdir()
    io.check_output(tmp_path / "empty")  # empty: fine
    with pytest.raises(FileExistsError, match="already holds an adapter; replace it with --overwrite"):
        io.check_output(saved)
    io.check_output(saved, overwrite=True)
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "todo.txt").write_text("keep me")
    (tmp_path / "file").write_text("x")
    for path in (tmp_path / "notes", tmp_path / "file"):
        with pytest.raises(FileExistsError, match="not an adapter folder"):
            io.check_output(path, overwrite=True)


def test_staging_publish_and_keep_partial(tmp_path, saved):
    """A run's folder: staged beside the target, published over the old adapter in one swap,
    or kept as a partial sibling that leaves the target alone."""
    before = snapshot(saved)
    staging = io.staging_dir(saved)
    assert staging.parent == tmp_path and staging.name.startswith("adapter.tmp-") and not any(staging.iterdir())
    save_adapter(staging, CONFIG, make(CONFIG, seed=5))
    (staging / "train_log.json").write_text("{}")
    partial = io.keep_partial(staging, saved)
    assert partial.name.startswith("adapter.partial-") and not staging.exists()
    assert snapshot(saved) == before
    second = io.keep_partial(io.staging_dir(saved), saved)  # the same second: a distinct name
    assert second != partial and second.exists()
    staging = io.staging_dir(saved)
    save_adapter(staging, CONFIG, make(CONFIG, seed=6))
    (staging / "train_log.json").write_text("{}")
    io.publish(staging, saved)
    assert not staging.exists() and (saved / "train_log.json").is_file()
    assert snapshot(saved) != before
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith("adapter.partial-")) == ["adapter"]
