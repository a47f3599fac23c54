"""ReftConfig: what is edited, where, and how; validated on construction; JSON round trip."""

from __future__ import annotations

import dataclasses
import json
import re
from dataclasses import dataclass, field

from minireft import consreft, direft, lobireft, loreft, noreft, ortho_direft
from minireft.positions import RULES, parse_positions

INTERVENTIONS = {"loreft": loreft.PARAMS, "direft": direft.PARAMS, "noreft": noreft.PARAMS,
                 "consreft": consreft.PARAMS, "lobireft": lobireft.PARAMS,
                 "ortho_direft": ortho_direft.PARAMS}  # a param named "R" lives on St(r, d)
INITS = ("paper", "identity")
DTYPES = ("float32", "float64")
COMPONENTS = ("block_output", "attention_output", "mlp_output")
# Any other component is a dotted path inside the block ("mlp.down_proj", "output.dense").
_SUBMODULE_PATH = re.compile(r"^[A-Za-z_]\w*(\.\w+)*$")


@dataclass(frozen=True)
class ReftConfig:
    """One intervention per (layer, group); groups are ("tied",) or the untied
    subset of ("prefix", "suffix") that the positions use.

    layers:       0-based indices of the transformer blocks edited (where in each: component)
    rank:         r, the subspace dimension (1 <= r <= hidden size)
    positions:    "f{p}+l{s}", "f{p}" or "l{s}": the first p and last s prompt tokens
    tied:         one intervention shared by prefix and suffix positions (True), or one each
    intervention: "loreft" (Φ(h) = h + Rᵀ(Wh + b − Rh)), "direft" (Φ(h) = h + W2ᵀ(W1h + b)),
                  "noreft" (h + W2ᵀ(W1h + b − W2h)), "consreft" (h + Rᵀ(b − Rh)),
                  "lobireft" (h + Rᵀb) or "ortho_direft" (h + Rᵀ(Wh + b)); R orthonormal
    init:         "paper" (W, b as nn.Linear) or "identity" (Φ(h) = h at the start)
    dropout:      dropout probability on the edit Φ(h) − h during training
    dtype:        the parameters' dtype, whatever the model's ("float32" or "float64")
    module_path:  dotted path of the nn.ModuleList of blocks, when it cannot be found alone
    position_rule: how a short prompt clamps p and s: "paper" (default) or "pyreft" (as pyreft
                  0.1.0 edits; minireft.positions); to_dict omits it when "paper"
    component:    whose output hidden state is edited in each block: "block_output" (default,
                  the residual stream), "attention_output" or "mlp_output" (the output of the
                  block's attention or MLP submodule, minireft.hf.blocks.find_component), or a
                  dotted path of a submodule inside the block ("mlp.down_proj"); to_dict omits
                  it when "block_output"
    """

    layers: tuple[int, ...]
    rank: int = 4
    positions: str = "f7+l7"
    tied: bool = False
    intervention: str = "loreft"
    init: str = "paper"
    dropout: float = 0.0
    dtype: str = "float32"
    module_path: str | None = field(default=None)
    position_rule: str = "paper"
    component: str = "block_output"

    def __post_init__(self):
        layers = (self.layers,) if isinstance(self.layers, int) else self.layers
        try:
            layers = tuple(layers)
        except TypeError:
            raise TypeError(f"layers must be an int or a list of ints, got {self.layers!r}") from None
        if not layers:
            raise ValueError("layers must name at least one block, e.g. layers=[8]")
        for layer in layers:
            if isinstance(layer, bool) or not isinstance(layer, int) or layer < 0:
                raise ValueError(f"layers must be non-negative ints, got {layer!r} in {self.layers!r}")
        if len(set(layers)) != len(layers):
            raise ValueError(f"layers must not repeat, got {list(layers)}")
        object.__setattr__(self, "layers", tuple(sorted(layers)))
        if isinstance(self.rank, bool) or not isinstance(self.rank, int) or self.rank < 1:
            raise ValueError(f"rank must be an int >= 1, got {self.rank!r}")
        parse_positions(self.positions)
        if not isinstance(self.tied, bool):
            raise TypeError(f"tied must be True or False, got {self.tied!r}")
        if self.intervention not in INTERVENTIONS:
            raise ValueError(f"intervention must be one of {sorted(INTERVENTIONS)}, got {self.intervention!r}")
        if self.init not in INITS:
            raise ValueError(f"init must be one of {list(INITS)}, got {self.init!r}")
        if self.intervention == "consreft" and self.init == "identity":
            raise ValueError(consreft.NO_IDENTITY)
        if isinstance(self.dropout, bool) or not isinstance(self.dropout, (int, float)) or not 0 <= self.dropout < 1:
            raise ValueError(f"dropout must be a number in [0, 1), got {self.dropout!r}")
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {list(DTYPES)}, got {self.dtype!r}")
        if self.module_path is not None and not isinstance(self.module_path, str):
            raise TypeError(f"module_path must be a dotted string such as 'model.layers', got {self.module_path!r}")
        if self.position_rule not in RULES:
            raise ValueError(f"position_rule must be one of {list(RULES)}, got {self.position_rule!r}")
        if not isinstance(self.component, str) or not (
                self.component in COMPONENTS or _SUBMODULE_PATH.match(self.component)):
            raise ValueError(f"component must be one of {list(COMPONENTS)} or the dotted path of a submodule "
                             f"inside the block such as 'mlp.down_proj', got {self.component!r}")

    @property
    def prefix_suffix(self) -> tuple[int, int]:
        return parse_positions(self.positions)

    @property
    def groups(self) -> tuple[str, ...]:
        if self.tied:
            return ("tied",)
        prefix, suffix = self.prefix_suffix
        return tuple(g for g, n in (("prefix", prefix), ("suffix", suffix)) if n > 0)

    @property
    def param_names(self) -> tuple[str, ...]:
        return INTERVENTIONS[self.intervention]

    def tensor_shapes(self, hidden_size: int) -> dict[str, tuple[int, ...]]:
        """{"{layer}.{group}.{param}": shape} for every tensor of an adapter."""
        if self.rank > hidden_size:
            raise ValueError(
                f"rank={self.rank} is greater than the hidden size {hidden_size}; choose rank <= {hidden_size}"
            )
        shapes = {}
        for layer in self.layers:
            for group in self.groups:
                for param in self.param_names:
                    shape = (self.rank,) if param == "b" else (self.rank, hidden_size)
                    shapes[f"{layer}.{group}.{param}"] = shape
        return shapes

    def to_dict(self) -> dict:
        out = dataclasses.asdict(self)
        out["layers"] = list(self.layers)
        if out["position_rule"] == "paper":
            # The default is left out so that adapters and corpus cases written before the
            # option existed keep their bytes, and older readers still read new "paper" ones.
            del out["position_rule"]
        if out["component"] == "block_output":
            del out["component"]  # likewise: the block output is what every adapter edited before
        return out

    @classmethod
    def from_dict(cls, data: dict) -> ReftConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown ReftConfig field(s) {unknown}; known fields are {sorted(known)}")
        return cls(**data)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> ReftConfig:
        return cls.from_dict(json.loads(text))
