"""ReftConfig: every field validated on construction, JSON round trip, groups and tensor names."""

from __future__ import annotations

import dataclasses
import json
import re

import pytest
from hypothesis import given
from hypothesis import strategies as st
from strategies import configs

from minireft import ReftConfig
from minireft.config import COMPONENTS

INVALID = [
    # (field, value, exception, message)
    ("layers", [], ValueError, r"layers must name at least one block, e.g. layers=\[8\]"),
    ("layers", [-1], ValueError, r"layers must be non-negative ints, got -1"),
    ("layers", [1.0], ValueError, r"layers must be non-negative ints, got 1.0"),
    ("layers", [True], ValueError, r"layers must be non-negative ints, got True"),
    ("layers", [3, 3], ValueError, r"layers must not repeat, got \[3, 3\]"),
    ("layers", None, TypeError, r"layers must be an int or a list of ints, got None"),
    ("rank", 0, ValueError, r"rank must be an int >= 1, got 0"),
    ("rank", 2.0, ValueError, r"rank must be an int >= 1, got 2.0"),
    ("rank", True, ValueError, r"rank must be an int >= 1, got True"),
    ("positions", "x3", ValueError, r"positions='x3' is malformed; accepted"),
    ("positions", "f0+l0", ValueError, r"edits no token"),
    ("positions", 7, TypeError, r"positions must be a string"),
    ("tied", "yes", TypeError, r"tied must be True or False, got 'yes'"),
    ("tied", 1, TypeError, r"tied must be True or False, got 1"),
    ("intervention", "lora", ValueError, r"intervention must be one of \[.*'direft'.*'loreft'.*\], got 'lora'"),
    ("init", "zeros", ValueError, r"init must be one of \['paper', 'identity'\], got 'zeros'"),
    ("dropout", 1.0, ValueError, r"dropout must be a number in \[0, 1\), got 1.0"),
    ("dropout", -0.1, ValueError, r"dropout must be a number in \[0, 1\), got -0.1"),
    ("dropout", True, ValueError, r"dropout must be a number in \[0, 1\), got True"),
    ("dropout", "0.1", ValueError, r"dropout must be a number in \[0, 1\), got '0.1'"),
    ("dtype", "float16", ValueError, r"dtype must be one of \['float32', 'float64'\], got 'float16'"),
    ("module_path", 3, TypeError, r"module_path must be a dotted string such as 'model.layers', got 3"),
    ("position_rule", "peft", ValueError, r"position_rule must be one of \['paper', 'pyreft'\], got 'peft'"),
    ("component", "attention output", ValueError,
     (r"component must be one of \['block_output', 'attention_output', 'mlp_output'\] or the dotted path of a "
      r"submodule inside the block such as 'mlp.down_proj', got 'attention output'")),
]

COMPONENT_ALSO_INVALID = ["", "mlp.", ".mlp", "mlp..down_proj", "0mlp", "mlp/down_proj", None, 3]


def test_every_field_has_a_validation_case():
    fields = {f.name for f in dataclasses.fields(ReftConfig)}
    assert fields == {field for field, *_ in INVALID}


@pytest.mark.parametrize("field, value, exc, match", INVALID, ids=[f"{f}={v!r}" for f, v, *_ in INVALID])
def test_invalid_field_is_rejected_with_its_name(field, value, exc, match):
    kwargs = {"layers": [4]} | {field: value}
    with pytest.raises(exc, match=match):
        ReftConfig(**kwargs)


@pytest.mark.parametrize("component", COMPONENT_ALSO_INVALID)
def test_component_must_be_a_name_or_a_dotted_path(component):
    with pytest.raises(ValueError, match=rf"component must be one of .*, got {re.escape(repr(component))}$"):
        ReftConfig(layers=[4], component=component)


@pytest.mark.parametrize("component", [*COMPONENTS, "mlp.down_proj", "output.dense", "mlp.experts.0"])
def test_component_accepts_the_names_and_dotted_paths(component):
    assert ReftConfig(layers=[4], component=component).component == component


def test_defaults_and_normalisation():
    c = ReftConfig(layers=[8, 2])
    assert c.layers == (2, 8)  # sorted tuple
    assert ReftConfig(layers=5).layers == (5,)  # a bare int is one layer
    assert (c.rank, c.positions, c.tied, c.intervention, c.init, c.dropout, c.dtype, c.module_path,
            c.position_rule, c.component) == (
        4, "f7+l7", False, "loreft", "paper", 0.0, "float32", None, "paper", "block_output")
    assert c.prefix_suffix == (7, 7)
    with pytest.raises(dataclasses.FrozenInstanceError):
        c.rank = 8


@given(config=configs(), component=st.sampled_from((*COMPONENTS, "mlp.down_proj")))
def test_json_round_trip(config, component):
    config = dataclasses.replace(config, component=component)
    text = config.to_json()
    again = ReftConfig.from_json(text)
    assert again == config
    assert again.to_json() == text
    data = json.loads(text)
    # position_rule and component are written only when they are not the defaults "paper" and
    # "block_output" (adapters written before the options keep their bytes)
    optional = ({"position_rule"} if config.position_rule == "paper" else set()) | (
        {"component"} if config.component == "block_output" else set())
    assert set(data) == {f.name for f in dataclasses.fields(ReftConfig)} - optional
    assert ReftConfig.from_dict(config.to_dict()) == config


def test_from_dict_rejects_unknown_fields():
    with pytest.raises(ValueError, match=r"unknown ReftConfig field\(s\) \['colour'\]; known fields are \["):
        ReftConfig.from_dict({"layers": [1], "colour": "red"})


def test_from_dict_reports_a_missing_required_field():
    with pytest.raises(TypeError, match="layers"):
        ReftConfig.from_dict({"rank": 4})


@pytest.mark.parametrize("positions, tied, groups", [
    ("f7+l7", True, ("tied",)),
    ("f7+l7", False, ("prefix", "suffix")),
    ("f0+l3", False, ("suffix",)),
    ("f0+l3", True, ("tied",)),
    ("l3", False, ("suffix",)),
    ("f3", False, ("prefix",)),
    ("f3+l0", False, ("prefix",)),
])
def test_groups(positions, tied, groups):
    assert ReftConfig(layers=[0], positions=positions, tied=tied).groups == groups


def test_tensor_shapes_name_every_layer_group_and_parameter():
    lo = ReftConfig(layers=[3, 1], rank=2, positions="f1+l1", tied=False)
    assert lo.tensor_shapes(6) == {
        f"{layer}.{group}.{param}": (2,) if param == "b" else (2, 6)
        for layer in (1, 3) for group in ("prefix", "suffix") for param in ("R", "W", "b")}
    di = ReftConfig(layers=[0], rank=3, positions="f0+l3", tied=False, intervention="direft")
    assert di.tensor_shapes(5) == {"0.suffix.W1": (3, 5), "0.suffix.W2": (3, 5), "0.suffix.b": (3,)}
    assert ReftConfig(layers=[0], tied=True).param_names == ("R", "W", "b")


def test_tensor_shapes_reject_a_rank_above_the_hidden_size():
    with pytest.raises(ValueError, match=r"rank=8 is greater than the hidden size 4; choose rank <= 4"):
        ReftConfig(layers=[0], rank=8).tensor_shapes(4)


def test_an_adapter_config_written_before_component_reads_as_block_output():
    # The JSON of a config from before the field existed: every other field, no "component".
    old = {"layers": [2, 5], "rank": 4, "positions": "f7+l7", "tied": False, "intervention": "loreft",
           "init": "paper", "dropout": 0.0, "dtype": "float32", "module_path": None}
    config = ReftConfig.from_dict(old)
    assert config.component == "block_output"
    assert config.to_dict() == old  # and it is written back byte for byte the same
