"""pyreft 0.1.0 checkpoints in and out: read_pyreft(folder, positions) -> (ReftConfig, params) and
write_pyreft(folder, config, params), exactly (reference/SPEC.md §8).

A pyreft folder (written by pyreft.ReftModel.save, i.e. pyvene 0.1.8's IntervenableModel.save):
    config.json                  representations [[layer, component, unit, nunit, rank, …]],
                                 intervention_types ["<class 'pyreft.interventions.X'>"], …
    intkey_{key}.bin             one torch.save'd state dict per intervention, where
                                 key = "layer_{layer}_comp_{component}_unit_{unit}_nunit_{nunit}#{k}"
                                 and k counts the earlier representations with the same layer

Components: pyvene's "block_output", "attention_output" and "mlp_output" are minireft's
ReftConfig.component of the same name (pyvene hooks the block, its self_attn / attn, its mlp:
the modules minireft.hf.blocks.find_component finds); one component per adapter. A minireft
component given as a path inside the block has no pyvene name and is not written.

Interventions and groups: one per layer is minireft's tied (its one parameter set edits the
prefix and the suffix positions, as pyreft's share_weights); two per layer are untied, #0 the
prefix and #1 the suffix (pyreft's `layers += layers`: every layer's prefix intervention, then
every layer's suffix one). pyreft stores Rᵀ (d×r); minireft's R is r×d:

    LoreftIntervention    {weight, bias, rotate_layer}        loreft:  W, b, R = rotate_layer.T
    DireftIntervention    learned_source.{weight, bias},      ortho_direft: W, b, R = Qᵀ
                          rotate_layer (orthogonal parametrization, Q its weight)
    NodireftIntervention  learned_source.{weight, bias},      direft:  W1, b, W2 = proj_layer.weight
                          proj_layer.weight (its bias unused by pyreft's forward)
    NoreftIntervention    learned_source.*, proj_layer.*      noreft:  W1, W2, b = b₁ − b₂
    ConsreftIntervention, LobireftIntervention:
                          learned_source (r,), rotate_layer   consreft / lobireft: b, R = Qᵀ

What the folder does not record, and read_pyreft therefore takes or assumes: the positions
("f7+l7": an argument), dropout (0), act_fn (linear, pyreft's default). An imported adapter
gets position_rule="pyreft", so it edits exactly the prompt tokens pyreft edits.

The prompt format (minireft.hf.prompt_format: chat template or raw prompts) has no pyreft
field, so write_pyreft keeps it under an extra key of config.json, "minireft_prompt_format"
(omitted when unknown), and read_prompt_format reads it back. pyreft's loader tolerates the
key: pyvene's IntervenableConfig passes unknown keys to transformers' PretrainedConfig,
which keeps them as attributes, so pyreft.ReftModel.load reads the folder as before and its
save writes the key again. A folder pyreft trained itself has no such key.

torch is needed (the .bin files are torch zip archives), and imported only when called: .bin
files are read with torch.load(weights_only=True), which refuses anything but tensors and
plain containers. pyreft's own loader (pyreft.ReftModel.load) rebuilds every
interventions' nn.Linear in bfloat16 (the folder does not record a dtype), so W and b
loaded there are rounded to bfloat16, and a LoReFT folder it loads only runs on a bfloat16
model unless its learned_source is cast back; pyreft cannot load NodireftIntervention or
NoreftIntervention folders at all (their constructor needs `add_bias`, which config.json
does not keep), so write_pyreft refuses "direft" and "noreft".
"""

from __future__ import annotations

import json
import pickle
import re
from collections import OrderedDict
from pathlib import Path

import numpy as np

from minireft import io
from minireft.config import ReftConfig

CONFIG_FILE = "config.json"
PROMPT_FORMAT_KEY = "minireft_prompt_format"  # config.json's extra key (module docstring)
COMPONENTS = ("block_output", "attention_output", "mlp_output")  # pyvene's names = ReftConfig.component
KINDS = {  # pyreft class -> minireft intervention
    "LoreftIntervention": "loreft",
    "DireftIntervention": "ortho_direft",
    "NodireftIntervention": "direft",
    "NoreftIntervention": "noreft",
    "ConsreftIntervention": "consreft",
    "LobireftIntervention": "lobireft",
}
CLASSES = {kind: cls for cls, kind in KINDS.items()}
WRITABLE = ("loreft", "ortho_direft", "consreft", "lobireft")  # what pyreft 0.1.0 can load back
_TYPE = re.compile(r"^<class '(?:[\w.]+\.)?(\w+)'>$")


class PyreftError(ValueError):
    """A pyreft folder is missing, malformed, or holds something minireft cannot represent."""


def _torch():
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is in the [torch] extra
        raise ImportError("reading or writing pyreft folders needs torch (its .bin files are torch "
                          "archives): pip install 'minireft[torch]'") from None
    return torch


def intervention_key(layer: int, k: int, component: str = "block_output") -> str:
    """pyvene 0.1.8's key of the k-th `component` intervention at `layer` (0-based k)."""
    return f"layer_{layer}_comp_{component}_unit_pos_nunit_1#{k}"


# ----------------------------------------------------------------------------- reading


def read_pyreft(folder, positions: str) -> tuple[ReftConfig, dict[str, np.ndarray]]:
    """(ReftConfig, {"{layer}.{group}.{param}": array}) of the pyreft folder, for the positions
    ("f7+l7") it was trained with (pyreft does not record them). position_rule is "pyreft";
    dtype float32 (float64 when every tensor is), init "paper", dropout 0; component as recorded."""
    folder = Path(folder)
    meta = _read_config(folder)
    reps, kinds = meta["representations"], meta["intervention_types"]
    if len(reps) != len(kinds) or not reps:
        raise PyreftError(f"{folder / CONFIG_FILE}: {len(reps)} representations but {len(kinds)} "
                          f"intervention_types; expected as many of each, at least one")
    seen: dict[int, int] = {}
    checked = [_check_representation(folder, i, rep) for i, rep in enumerate(reps)]  # (layer, rank, component)
    components = {component for _, _, component in checked}
    if len(components) != 1:
        raise PyreftError(f"{folder}: interventions on several components {sorted(components)}; a minireft "
                          f"adapter edits one component")
    entries = []  # (layer, k, kind, rank, state dict)
    for i, ((layer, rank, component), type_string) in enumerate(zip(checked, kinds)):
        kind = _kind(folder, i, type_string)
        k = seen[layer] = seen.get(layer, -1) + 1
        entries.append((layer, k, kind, rank,
                        _load_bin(folder / f"intkey_{intervention_key(layer, k, component)}.bin")))
    kind = {e[2] for e in entries}
    if len(kind) != 1:
        raise PyreftError(f"{folder}: interventions of several types {sorted(kind)}; a minireft adapter "
                          f"has one intervention type")
    counts = set(seen.values())
    if counts - {0, 1} or len(counts) != 1:
        raise PyreftError(f"{folder}: layers hold {sorted(c + 1 for c in seen.values())} interventions; "
                          f"expected 1 per layer (tied) or 2 (untied: #0 prefix, #1 suffix) for every layer")
    tied = counts == {0}
    config = _config(folder, sorted(seen), {e[3] for e in entries}, positions, tied, kind.pop(), components.pop())
    groups = config.groups if not tied else ("tied",)
    params = {}
    for layer, k, kind, _, state in entries:
        for name, value in _params_of(kind, state, folder, layer, k, config.component).items():
            params[f"{layer}.{groups[k]}.{name}"] = value
    dtype = np.float64 if all(v.dtype == np.float64 for v in params.values()) else np.float32
    params = {k: v.astype(dtype) for k, v in sorted(params.items())}
    config = ReftConfig.from_dict(config.to_dict() | {"dtype": np.dtype(dtype).name, "position_rule": "pyreft"})
    try:
        io.check_params(config, params)
    except io.AdapterError as e:
        raise PyreftError(f"{folder}: {e}") from None
    return config, params


def read_prompt_format(folder) -> dict | None:
    """The prompt format recorded in the pyreft folder's config.json ("minireft_prompt_format",
    as write_pyreft stores it: {"chat_template": bool, "chat_template_sha256": str | null}),
    None when the folder has none (pyreft itself never writes one). Reads JSON only."""
    path = Path(folder) / CONFIG_FILE
    value = _read_config(Path(folder)).get(PROMPT_FORMAT_KEY)
    if value is not None and not (isinstance(value, dict) and isinstance(value.get("chat_template"), bool)
                                  and isinstance(value.get("chat_template_sha256"), (str, type(None)))):
        raise PyreftError(f"{path}: {PROMPT_FORMAT_KEY} = {value!r}; expected {{'chat_template': bool, "
                          f"'chat_template_sha256': str | null}} (or no key)")
    return value


def _read_config(folder: Path) -> dict:
    if not folder.is_dir():
        raise PyreftError(f"{folder} is not a folder; expected a folder written by pyreft's ReftModel.save")
    path = folder / CONFIG_FILE
    if not path.is_file():
        raise PyreftError(f"{path} is missing; a pyreft folder has config.json and intkey_*.bin files")
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise PyreftError(f"{path} is not valid JSON: {e}") from None
    for field in ("representations", "intervention_types"):
        if not isinstance(meta, dict) or not isinstance(meta.get(field), list):
            raise PyreftError(f"{path} has no list {field!r}; is this a pyreft (pyvene) folder?")
    return meta


def _check_representation(folder: Path, i: int, rep) -> tuple[int, int, str]:
    """(layer, rank, component) of representation i: [layer, component, unit, nunit, rank, …,
    link key (9th), …]."""
    where = f"{folder / CONFIG_FILE}: representations[{i}]"
    if not isinstance(rep, list) or len(rep) < 5:
        raise PyreftError(f"{where} = {rep!r} is not [layer, component, unit, nunit, rank, …]")
    layer, component, unit, nunit, rank = rep[:5]
    if component not in COMPONENTS:
        raise PyreftError(f"{where} edits {component!r}; minireft converts {list(COMPONENTS)} interventions only")
    if unit != "pos" or nunit != 1:
        raise PyreftError(f"{where} has unit {unit!r}, nunit {nunit!r}; minireft converts unit 'pos', nunit 1")
    if len(rep) > 9 and rep[9] is not None:
        raise PyreftError(f"{where} links interventions (intervention_link_key {rep[9]!r}); not supported")
    for name, value in (("layer", layer), ("low_rank_dimension", rank)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise PyreftError(f"{where} has {name} {value!r}; expected a non-negative integer")
    return layer, rank, component


def _kind(folder: Path, i: int, type_string) -> str:
    match = _TYPE.match(type_string) if isinstance(type_string, str) else None
    if match is None or match.group(1) not in KINDS:
        raise PyreftError(f"{folder / CONFIG_FILE}: intervention_types[{i}] = {type_string!r}; minireft "
                          f"converts pyreft's {sorted(KINDS)}")
    return KINDS[match.group(1)]


def _load_bin(path: Path) -> dict[str, np.ndarray]:
    """{name: float array} of a torch.save'd state dict; tensors and plain containers only."""
    torch = _torch()
    if not path.is_file():
        raise PyreftError(f"{path} is missing; config.json lists this intervention")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, ValueError, EOFError, OSError, pickle.UnpicklingError) as e:
        # a corrupt archive, or a pickle holding more than tensors (weights_only refuses it)
        raise PyreftError(f"{path} is not a readable tensor file ({type(e).__name__}: "
                          f"{str(e).splitlines()[0] if str(e) else ''})") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise PyreftError(f"{path} does not hold a state dict of tensors")
    return {k: v.detach().to(torch.float64 if v.dtype == torch.float64 else torch.float32).numpy()
            for k, v in state.items() if v.is_floating_point()}


def _config(folder, layers, ranks, positions, tied, kind, component) -> ReftConfig:
    if len(ranks) != 1:
        raise PyreftError(f"{folder}: interventions of ranks {sorted(ranks)}; a minireft adapter has one rank")
    try:
        config = ReftConfig(layers=tuple(layers), rank=ranks.pop(), positions=positions, tied=tied,
                            intervention=kind, component=component)
    except (TypeError, ValueError) as e:
        raise PyreftError(f"positions: {e}") from None
    if not tied and len(config.groups) != 2:
        raise PyreftError(f"{folder} holds 2 interventions per layer (prefix, suffix), but positions="
                          f"{positions!r} has one side only; pass the 'f<p>+l<s>' it was trained with")
    return config


def _orthogonal_weight(state: dict, prefix: str) -> np.ndarray:
    """Q (d×r): the weight that torch's orthogonal parametrization computes from the saved
    `{prefix}parametrizations.weight.original` and `.0.base`, as pyreft's forward sees it."""
    torch = _torch()
    original = state[f"{prefix}parametrizations.weight.original"]
    with torch.random.fork_rng(devices=[]):  # building the parametrization draws from torch's RNG
        layer = _rotate_layer(*original.shape, dtype=torch.float64 if original.dtype == np.float64 else torch.float32)
    layer.load_state_dict({k[len(prefix):]: torch.from_numpy(v) for k, v in state.items() if k.startswith(prefix)})
    with torch.no_grad():
        return layer.weight.numpy().copy()


def _params_of(kind: str, state: dict, folder: Path, layer: int, k: int, component: str) -> dict[str, np.ndarray]:
    try:
        if kind == "loreft":
            return {"R": state["rotate_layer"].T, "W": state["weight"], "b": state["bias"]}
        if kind == "ortho_direft":
            return {"R": _orthogonal_weight(state, "rotate_layer.").T, "W": state["learned_source.weight"],
                    "b": state["learned_source.bias"]}
        if kind in ("consreft", "lobireft"):
            return {"R": _orthogonal_weight(state, "rotate_layer.").T, "b": state["learned_source"]}
        if kind == "direft":
            return {"W1": state["learned_source.weight"], "W2": state["proj_layer.weight"],
                    "b": state["learned_source.bias"]}
        b2 = state.get("proj_layer.bias", 0.0)  # noreft: (W1 h + b₁) − (W2 h + b₂)
        return {"W1": state["learned_source.weight"], "W2": state["proj_layer.weight"],
                "b": state["learned_source.bias"] - b2}
    except KeyError as e:
        raise PyreftError(f"{folder / ('intkey_' + intervention_key(layer, k, component) + '.bin')} has no tensor {e} "
                          f"(it holds {sorted(state)}); expected pyreft's {CLASSES[kind]} state dict") from None


# ----------------------------------------------------------------------------- writing


def write_pyreft(folder, config: ReftConfig, params: dict, *, prompt_format: dict | None = None) -> Path:
    """Write `folder` so that pyreft 0.1.0's ReftModel.load(folder, model) builds these
    interventions (module docstring). Tensors are written in float32; a float64 adapter is
    rounded. The positions and position_rule are not stored (pyreft has no field for them):
    pass the same positions to pyreft's get_intervention_locations. prompt_format (the adapter's
    reft_config.json "prompt_format" dict) goes under config.json's "minireft_prompt_format",
    which pyreft ignores and read_prompt_format reads back. The folder must not exist, or be
    empty."""
    torch = _torch()
    folder = Path(folder)
    if config.intervention not in WRITABLE:
        raise PyreftError(f"intervention {config.intervention!r} cannot be written for pyreft: pyreft 0.1.0's "
                          f"loader cannot rebuild {CLASSES[config.intervention]} (it needs add_bias, which "
                          f"its config.json does not keep); writable: {list(WRITABLE)}")
    if config.component not in COMPONENTS:
        raise PyreftError(f"component {config.component!r} cannot be written for pyreft: pyvene names "
                          f"{list(COMPONENTS)} only, not a path inside the block")
    d = io.check_params(config, params)
    if folder.is_file() or (folder.is_dir() and any(folder.iterdir())):
        raise FileExistsError(f"{folder} exists and is not empty; choose a new folder for the pyreft copy")
    # pyreft's untied layout: every layer's prefix intervention (#0), then every layer's suffix one (#1).
    order = [(layer, group) for group in config.groups for layer in config.layers]
    keys, states = [], {}
    for layer, group in order:
        k = config.groups.index(group)
        keys.append(intervention_key(layer, k, config.component))
        tensors = {p: torch.from_numpy(np.asarray(params[f"{layer}.{group}.{p}"], dtype=np.float32).copy())
                   for p in config.param_names}
        states[keys[-1]] = _state_of(config.intervention, tensors, d)
    meta = {
        "intervention_constant_sources": [True] * len(order),
        "intervention_dimensions": [d] * len(order),
        "intervention_types": [f"<class 'pyreft.interventions.{CLASSES[config.intervention]}'>"] * len(order),
        "mode": "parallel",
        "representations": [[layer, config.component, "pos", 1, config.rank] + [None] * 9 for layer, _ in order],
        "sorted_keys": keys,
    }
    if prompt_format is not None:
        meta[PROMPT_FORMAT_KEY] = prompt_format
    staging = io.staging_dir(folder)
    try:
        for key, state in states.items():
            torch.save(state, staging / f"intkey_{key}.bin")
        (staging / CONFIG_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        if folder.is_dir():
            folder.rmdir()  # empty, checked above
        io.publish(staging, folder)
    except BaseException:
        import shutil

        shutil.rmtree(staging, ignore_errors=True)
        raise
    return folder


def _state_of(kind: str, t: dict, d: int) -> OrderedDict:
    """The state dict pyreft's intervention of this kind saves and loads (module docstring)."""
    torch = _torch()
    if kind == "loreft":  # LoreftIntervention.state_dict, overridden by pyreft
        return OrderedDict(weight=t["W"], bias=t["b"], rotate_layer=t["R"].T.contiguous())
    state = OrderedDict(embed_dim=torch.tensor(d), interchange_dim=torch.tensor(d))  # pyvene's buffers
    for name, value in _orthogonal_state(t["R"].T.contiguous()).items():
        state[f"rotate_layer.{name}"] = value
    if kind == "ortho_direft":
        state["learned_source.weight"], state["learned_source.bias"] = t["W"], t["b"]
    else:  # consreft, lobireft: a bare (r,) parameter
        state["learned_source"] = t["b"]
    return state


def _orthogonal_state(Q) -> dict:
    """{original, base} of torch's orthogonal parametrization whose weight is Q (d×r) exactly:
    set the weight (right_inverse), then the base's first r columns to Q, as pyreft's
    LoreftIntervention.load_state_dict does."""
    torch = _torch()
    # right_inverse completes Q to a square base with torch.randn; those columns do not reach the
    # weight, but a fixed seed makes the files reproducible, and fork_rng leaves the caller's
    # random stream untouched.
    with torch.no_grad(), torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        layer = _rotate_layer(*Q.shape, dtype=Q.dtype)
        layer.weight = Q
        layer.parametrizations.weight[0].base[:, : Q.shape[1]] = Q
        if not torch.equal(layer.weight, Q):
            raise PyreftError("could not store R exactly in torch's orthogonal parametrization "
                              f"(max error {float((layer.weight - Q).abs().max()):.1e})")
    return {k: v.detach().clone() for k, v in layer.state_dict().items()}


def _rotate_layer(d: int, r: int, dtype):
    """pyreft's LowRankRotateLayer(d, r) under torch's orthogonal parametrization (weight d×r)."""
    torch = _torch()
    module = torch.nn.Module()
    module.weight = torch.nn.Parameter(torch.eye(d, r, dtype=dtype))
    return torch.nn.utils.parametrizations.orthogonal(module)
