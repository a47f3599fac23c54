"""pyreft 0.1.0 checkpoints in and out (minireft.pyreft), against folders the real pyreft wrote
(tests/fixtures/pyreft, scripts/make_pyreft_fixtures.py) and, where pyreft is installed, its
own intervened forward: logits with the imported adapter equal pyreft's on the same prompts,
short prompts included, and folders minireft writes load into pyreft's own loader with equal
logits. The reading and writing tests need torch only; the parity tests need pyreft
(`pip install --no-deps pyreft==0.1.0 pyvene==0.1.8`)."""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="pyreft folders are torch archives")

from minireft import ReftConfig, io
from minireft.positions import intervention_positions, parse_positions
from minireft.pyreft import PyreftError, read_pyreft, write_pyreft
from minireft.stiefel import orthonormality_error

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "fixtures" / "pyreft"
MANIFEST = json.loads((FIXTURES / "fixtures.json").read_text(encoding="utf-8"))
KIND = {"LoreftIntervention": "loreft", "DireftIntervention": "ortho_direft", "NodireftIntervention": "direft",
        "ConsreftIntervention": "consreft", "LobireftIntervention": "lobireft"}
PROMPT_LENGTHS = (1, 2, 3, 4, 5, 8, 12)  # short prompts (n < p + s, n < 2p, n < 2s) and long ones
RTOL = 1e-5  # float32 logits, relative in the max norm (SPEC §9)

_spec = importlib.util.spec_from_file_location("make_pyreft_fixtures", ROOT / "scripts" / "make_pyreft_fixtures.py")
fixtures = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(fixtures)


def have_pyreft() -> bool:
    try:
        fixtures.import_pyreft()
    except ImportError:
        return False
    return True


needs_pyreft = pytest.mark.skipif(not have_pyreft(), reason="pyreft is not installed: "
                                  "pip install --no-deps pyreft==0.1.0 pyvene==0.1.8")


def relative(got, want) -> float:
    return float((got - want).abs().max() / want.abs().max())


# ---------------------------------------------------------------- reading what pyreft wrote


@pytest.mark.parametrize("name", sorted(MANIFEST))
def test_a_pyreft_folder_reads_into_the_config_it_was_built_with(name):
    spec = MANIFEST[name]
    config, params = read_pyreft(FIXTURES / name, spec["positions"])
    assert config.intervention == KIND[spec["class"]]
    assert list(config.layers) == spec["layers"] and config.rank == spec["rank"]
    assert config.positions == spec["positions"] and config.tied == spec["tied"]
    assert config.position_rule == "pyreft" and config.dtype == "float32"
    assert io.check_params(config, params) == spec["hidden_size"]
    for key, value in params.items():
        if key.endswith(".R"):
            assert orthonormality_error(value) < 1e-5, key


def test_loreft_R_is_the_transposed_rotate_layer_and_groups_follow_pyreft_order():
    """Untied: representation #0 of a layer is the prefix, #1 the suffix (pyreft's layers += layers)."""
    _, params = read_pyreft(FIXTURES / "loreft_untied", "f2+l2")
    for layer in (0, 2):
        for k, group in enumerate(("prefix", "suffix")):
            state = torch.load(FIXTURES / "loreft_untied" / f"intkey_layer_{layer}_comp_block_output_unit_pos_nunit_1#{k}.bin",
                               weights_only=True)
            assert np.array_equal(params[f"{layer}.{group}.R"], state["rotate_layer"].numpy().T)
            assert np.array_equal(params[f"{layer}.{group}.W"], state["weight"].numpy())
            assert np.array_equal(params[f"{layer}.{group}.b"], state["bias"].numpy())


@pytest.mark.parametrize("name", [n for n in sorted(MANIFEST) if MANIFEST[n]["class"] != "NodireftIntervention"])
def test_write_then_read_gives_the_same_adapter_bit_for_bit(name, tmp_path):
    config, params = read_pyreft(FIXTURES / name, MANIFEST[name]["positions"])
    write_pyreft(tmp_path / "out", config, params)
    again_config, again = read_pyreft(tmp_path / "out", config.positions)
    assert again_config == config
    assert sorted(again) == sorted(params)
    for key in params:
        assert np.array_equal(again[key], params[key]), key
    names = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert names == sorted(p.name for p in (FIXTURES / name).iterdir())


def test_written_state_dicts_have_pyreft_names_and_shapes(tmp_path):
    for name in ("loreft_untied", "direft_tied"):
        config, params = read_pyreft(FIXTURES / name, MANIFEST[name]["positions"])
        write_pyreft(tmp_path / name, config, params)
        for original in sorted((FIXTURES / name).glob("*.bin")):
            want = torch.load(original, weights_only=True)
            got = torch.load(tmp_path / name / original.name, weights_only=True)
            assert list(got) == list(want) or sorted(got) == sorted(want)
            assert {k: (v.shape, v.dtype) for k, v in got.items()} == {k: (v.shape, v.dtype) for k, v in want.items()}


def test_reading_and_writing_are_deterministic_and_leave_the_global_rng_alone(tmp_path):
    torch.manual_seed(7)
    expected_next = torch.rand(3)
    torch.manual_seed(7)
    config, params = read_pyreft(FIXTURES / "direft_untied", "f1+l3")
    for out in ("a", "b"):
        write_pyreft(tmp_path / out, config, params)
    assert torch.equal(torch.rand(3), expected_next)
    for f in sorted((tmp_path / "a").iterdir()):
        assert f.read_bytes() == (tmp_path / "b" / f.name).read_bytes(), f.name


# ---------------------------------------------------------------- bad input


def broken_copy(tmp_path, name="loreft_tied"):
    folder = tmp_path / name
    shutil.copytree(FIXTURES / name, folder)
    return folder


def test_bad_folders_are_refused_naming_what_is_wrong(tmp_path):
    with pytest.raises(PyreftError, match=r"is not a folder; expected a folder written by pyreft"):
        read_pyreft(tmp_path / "nowhere", "f1+l1")
    folder = broken_copy(tmp_path)
    (folder / "config.json").write_text("{not json", encoding="utf-8")
    with pytest.raises(PyreftError, match=r"config.json is not valid JSON"):
        read_pyreft(folder, "f3+l1")
    (folder / "config.json").unlink()
    with pytest.raises(PyreftError, match=r"config.json is missing"):
        read_pyreft(folder, "f3+l1")


class Arbitrary:
    pass


def test_a_missing_or_foreign_bin_is_refused(tmp_path):
    folder = broken_copy(tmp_path)
    victim = folder / "intkey_layer_1_comp_block_output_unit_pos_nunit_1#0.bin"
    victim.write_bytes(b"not a torch archive")
    with pytest.raises(PyreftError, match=r"#0.bin is not a readable tensor file"):
        read_pyreft(folder, "f3+l1")
    torch.save({"weight": Arbitrary()}, victim)  # an arbitrary object: weights_only refuses it
    with pytest.raises(PyreftError, match=r"#0.bin is not a readable tensor file \(UnpicklingError"):
        read_pyreft(folder, "f3+l1")
    victim.unlink()
    with pytest.raises(PyreftError, match=r"#0.bin is missing; config.json lists this intervention"):
        read_pyreft(folder, "f3+l1")


def test_an_unknown_intervention_or_component_is_refused(tmp_path):
    folder = broken_copy(tmp_path)
    meta = json.loads((folder / "config.json").read_text())
    meta["intervention_types"][0] = "<class 'pyvene.models.interventions.VanillaIntervention'>"
    (folder / "config.json").write_text(json.dumps(meta))
    with pytest.raises(PyreftError, match=r"intervention_types\[0\] = .*VanillaIntervention.*; minireft converts"):
        read_pyreft(folder, "f3+l1")
    meta["intervention_types"][0] = meta["intervention_types"][1]
    meta["representations"][0][1] = "mlp_input"  # a pyvene component minireft has no counterpart for
    (folder / "config.json").write_text(json.dumps(meta))
    with pytest.raises(PyreftError, match=r"representations\[0\] edits 'mlp_input'"):
        read_pyreft(folder, "f3+l1")


def test_untied_folders_need_two_sided_positions_and_valid_ones(tmp_path):
    with pytest.raises(PyreftError, match=r"2 interventions per layer .* positions='l3' has one side only"):
        read_pyreft(FIXTURES / "loreft_untied", "l3")
    with pytest.raises(PyreftError, match=r"positions: positions='7' is malformed"):
        read_pyreft(FIXTURES / "loreft_untied", "7")


def test_write_refuses_what_pyreft_cannot_load_and_a_used_folder(tmp_path):
    config, params = read_pyreft(FIXTURES / "nodireft_tied", "l3")
    with pytest.raises(PyreftError, match=r"'direft' cannot be written for pyreft: .*NodireftIntervention"):
        write_pyreft(tmp_path / "out", config, params)
    config, params = read_pyreft(FIXTURES / "loreft_tied", "f3+l1")
    (tmp_path / "used").mkdir()
    (tmp_path / "used" / "x").write_text("x")
    with pytest.raises(FileExistsError, match=r"exists and is not empty"):
        write_pyreft(tmp_path / "used", config, params)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["used"]  # no staging folder left behind


# ---------------------------------------------------------------- against pyreft's own forward


def tiny_model():
    import tiny_models

    return tiny_models.build("llama")[0]


def prompt(n: int, seed: int) -> torch.Tensor:
    import tiny_models

    return torch.randint(3, tiny_models.VOCAB, (1, n), generator=torch.Generator().manual_seed(seed))


def pyreft_logits(reft, ids, positions, tied) -> torch.Tensor:
    """pyreft's intervened forward as its datasets feed it: a pad token (masked) prepended,
    locations from its get_intervention_locations shifted by one; logits of the real tokens."""
    n = ids.shape[1]
    padded = torch.cat([torch.zeros(1, 1, dtype=ids.dtype), ids], dim=1)
    mask = torch.cat([torch.zeros(1, 1, dtype=torch.long), torch.ones(1, n, dtype=torch.long)], dim=1)
    locations = fixtures.pyreft_locations(n, positions, len(reft.interventions), tied)
    with torch.no_grad():
        _, out = reft({"input_ids": padded, "attention_mask": mask},
                      unit_locations={"sources->base": (None, [[row] for row in locations])})
    return out.logits[:, 1:]


def minireft_logits(config, params, ids) -> torch.Tensor:
    from minireft.hf.model import attach

    reft = attach(tiny_model(), config)
    with torch.no_grad():
        for name, p in reft.interventions.named_parameters():
            p.copy_(torch.from_numpy(params[name]))
        return reft(input_ids=ids, attention_mask=torch.ones_like(ids)).logits


@needs_pyreft
@pytest.mark.parametrize("name", sorted(MANIFEST))
def test_imported_adapter_gives_pyreft_logits_short_prompts_included(name):
    spec = MANIFEST[name]
    config, params = read_pyreft(FIXTURES / name, spec["positions"])
    reft = fixtures.build_pyreft(tiny_model(), name, folder=FIXTURES / name)
    base = tiny_model()
    worst, paper_differs = 0.0, False
    for n in PROMPT_LENGTHS:
        ids = prompt(n, seed=n)
        want = pyreft_logits(reft, ids, spec["positions"], spec["tied"])
        edits = any(intervention_positions(n, *config.prefix_suffix, rule="pyreft"))
        with torch.no_grad():
            moved = relative(base(ids).logits, want)
        # pyreft edits nothing when ⌊n/2⌋ = 0 (n = 1); otherwise its edit must show
        assert moved > 1e-4 if edits else moved <= RTOL, f"n={n}: {moved:.1e}"
        got = minireft_logits(config, params, ids)
        worst = max(worst, relative(got, want))
        paper = minireft_logits(ReftConfig.from_dict(config.to_dict() | {"position_rule": "paper"}), params, ids)
        paper_differs |= relative(paper, want) > 1e-3
    print(f"{name}: max relative |Δlogits| over n in {PROMPT_LENGTHS}: {worst:.2e}")
    assert worst <= RTOL, f"{name}: {worst:.2e}"
    assert paper_differs, "the paper's rule should edit other tokens on some short prompt"


def bf16_exact(config, seed) -> dict:
    """Random parameters for `config` (d = 32) whose non-R entries are bfloat16 numbers, so that
    pyreft's loader (which rebuilds nn.Linear in bfloat16) loses nothing."""
    from minireft.hf.model import attach

    reft = attach(tiny_model(), config, seed=seed)
    out = {}
    for name, value in reft.adapter_state().items():
        if not name.endswith(".R"):
            value = torch.from_numpy(value + 0.1).to(torch.bfloat16).float().numpy()
        out[name] = value
    return out


EXPORTS = [("loreft", False, "f2+l2", (0, 2)), ("loreft", True, "f1+l3", (1,)),
           ("ortho_direft", False, "f3+l1", (0, 1, 2)), ("ortho_direft", True, "f2+l2", (2,)),
           ("consreft", True, "f1+l1", (0,)), ("lobireft", False, "f2+l1", (1,))]


@needs_pyreft
@pytest.mark.parametrize("kind, tied, positions, layers", EXPORTS)
def test_an_exported_folder_loads_into_pyreft_with_equal_logits(kind, tied, positions, layers, tmp_path):
    pyreft = fixtures.import_pyreft()
    config = ReftConfig(layers=layers, rank=3, positions=positions, tied=tied, intervention=kind,
                        position_rule="pyreft")
    params = bf16_exact(config, seed=len(layers) + tied)
    write_pyreft(tmp_path / "pyreft", config, params)
    reft = pyreft.ReftModel.load(str(tmp_path / "pyreft"), tiny_model())  # pyreft's own loader
    for intervention in reft.interventions.values():
        # its loader builds learned_source in bfloat16; a float32 model needs it back in float32
        if isinstance(getattr(intervention, "learned_source", None), torch.nn.Linear):
            intervention.learned_source.float()
    worst = 0.0
    for n in PROMPT_LENGTHS:
        ids = prompt(n, seed=100 + n)
        want = pyreft_logits(reft, ids, positions, tied)
        worst = max(worst, relative(minireft_logits(config, params, ids), want))
    with torch.no_grad():
        assert relative(tiny_model()(ids).logits, want) > 1e-4, "pyreft's forward edited nothing"
    print(f"{kind} {'tied' if tied else 'untied'} {positions}: max relative |Δlogits| {worst:.2e}")
    assert worst <= RTOL


@needs_pyreft
def test_pyreft_loader_rounds_learned_source_to_bfloat16(tmp_path):
    """Why the export test uses bfloat16-exact W and b: pyreft's loader keeps only that."""
    pyreft = fixtures.import_pyreft()
    config, params = read_pyreft(FIXTURES / "loreft_tied", "f3+l1")
    write_pyreft(tmp_path / "out", config, params)
    reft = pyreft.ReftModel.load(str(tmp_path / "out"), tiny_model())
    intervention = reft.interventions["layer_0_comp_block_output_unit_pos_nunit_1#0"]
    W = intervention.learned_source.weight
    assert W.dtype == torch.bfloat16
    assert torch.equal(W.float(), torch.from_numpy(params["0.tied.W"]).to(torch.bfloat16).float())
    assert torch.equal(intervention.rotate_layer.weight, torch.from_numpy(params["0.tied.R"].T.copy()))


@needs_pyreft
@pytest.mark.parametrize("n", range(1, 13))
@pytest.mark.parametrize("positions, tied", [("f7+l7", False), ("f2+l3", True), ("l3", True), ("f3", True)])
def test_the_pyreft_rule_is_pyrefts_locations_without_pads(n, positions, tied):
    p, s = parse_positions(positions)
    pre, suf = intervention_positions(n, p, s, rule="pyreft")
    locations = fixtures.pyreft_locations(n, positions, 1 if tied else 2, tied)
    real = [sorted({i - 1 for i in row if i > 0}) for row in locations]  # drop the pad (0), unshift
    assert real == ([pre + suf] if tied or not (p and s) else [pre, suf])


FORMAT = {"chat_template": True, "chat_template_sha256": "ab" * 32}


@needs_pyreft
def test_the_prompt_format_key_loads_in_pyreft_and_survives_its_save(tmp_path):
    """pyreft's loader reads a folder with the extra "minireft_prompt_format" key as before
    (the same interventions as without it), and pyreft's own save writes the key back."""
    from minireft.pyreft import read_prompt_format

    pyreft = fixtures.import_pyreft()
    config, params = read_pyreft(FIXTURES / "loreft_tied", "f3+l1")
    write_pyreft(tmp_path / "with", config, params, prompt_format=FORMAT)
    write_pyreft(tmp_path / "without", config, params)
    assert read_prompt_format(tmp_path / "with") == FORMAT and read_prompt_format(tmp_path / "without") is None
    loaded = {name: pyreft.ReftModel.load(str(tmp_path / name), tiny_model()) for name in ("with", "without")}
    states = {name: {k: v.state_dict() for k, v in reft.interventions.items()} for name, reft in loaded.items()}
    assert states["with"].keys() == states["without"].keys()
    for key, state in states["with"].items():
        assert all(torch.equal(t, states["without"][key][n]) for n, t in state.items()), key
    loaded["with"].save(str(tmp_path / "saved"))
    assert read_prompt_format(tmp_path / "saved") == FORMAT
    assert read_pyreft(tmp_path / "saved", "f3+l1")[0] == config  # (W, b come back bfloat16-rounded)


@pytest.mark.parametrize("value", ["yes", {"chat_template": "yes"}, {"chat_template": True, "chat_template_sha256": 3}])
def test_a_malformed_prompt_format_key_is_refused_naming_the_file(tmp_path, value):
    from minireft.pyreft import PROMPT_FORMAT_KEY, read_prompt_format

    folder = broken_copy(tmp_path)
    meta = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps(meta | {PROMPT_FORMAT_KEY: value}))
    with pytest.raises(PyreftError, match=f"config.json: {PROMPT_FORMAT_KEY} = "):
        read_prompt_format(folder)


# ---------------------------------------------------------------- the command


def test_convert_from_and_to_pyreft_round_trips(tmp_path, capsys):
    from minireft import cli

    source = FIXTURES / "direft_untied"
    assert cli.main(["convert", "--from", "pyreft", str(source), "--positions", "f1+l3",
                     "--output", str(tmp_path / "adapter")]) == 0
    assert "ortho_direft, layers [1, 2], rank 2, untied, positions f1+l3, position_rule pyreft" in capsys.readouterr().out
    config, params = io.load_adapter(tmp_path / "adapter")
    want_config, want = read_pyreft(source, "f1+l3")
    assert config == want_config and all(np.array_equal(params[k], want[k]) for k in want)
    assert cli.main(["convert", "--to", "pyreft", str(tmp_path / "adapter"), "--output", str(tmp_path / "back")]) == 0
    assert "pyreft does not store positions: feed it f1+l3" in capsys.readouterr().err
    again_config, again = read_pyreft(tmp_path / "back", "f1+l3")
    assert again_config == config and all(np.array_equal(again[k], params[k]) for k in params)


@pytest.mark.parametrize("argv, words", [
    (["--from", "pyreft", "FIX/loreft_tied", "--output", "OUT/a"], "--positions is required with --from pyreft"),
    (["--from", "pyreft", "OUT/none", "--positions", "f1", "--output", "OUT/a"], "is not a folder"),
    (["--from", "pyreft", "FIX/loreft_untied", "--positions", "f2", "--output", "OUT/a"], "has one side only"),
    (["--to", "pyreft", "FIX/loreft_tied", "--output", "OUT/a"], "reft_config.json"),
    (["--to", "pyreft", "OUT/none", "--positions", "f1", "--output", "OUT/a"], "apply to --from pyreft only"),
])
def test_convert_errors_are_one_line(argv, words, tmp_path, capsys):
    from minireft import cli

    argv = [a.replace("FIX", str(FIXTURES)).replace("OUT", str(tmp_path)) for a in argv]
    assert cli.main(["convert", *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("minireft convert: ") and err.count("\n") == 1 and words in err, err
    assert not (tmp_path / "a").exists()


def test_convert_without_torch_names_the_pip_command(monkeypatch, capsys, tmp_path):
    import sys

    from minireft import cli

    monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` now raises ImportError
    assert cli.main(["convert", "--from", "pyreft", str(FIXTURES / "loreft_tied"), "--positions", "f3+l1",
                     "--output", str(tmp_path / "a")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "needs torch" in err and "pip install 'minireft[torch]'" in err, err


@needs_pyreft
def test_a_left_padded_batch_gives_every_row_pyrefts_logits():
    """One minireft batch of left-padded prompts of 1..12 tokens; each row against pyreft's
    forward on that prompt alone."""
    spec = MANIFEST["loreft_untied"]
    config, params = read_pyreft(FIXTURES / "loreft_untied", spec["positions"])
    reft = fixtures.build_pyreft(tiny_model(), "loreft_untied", folder=FIXTURES / "loreft_untied")
    prompts = [prompt(n, seed=200 + n) for n in PROMPT_LENGTHS]
    width = max(PROMPT_LENGTHS)
    ids = torch.zeros(len(prompts), width, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for b, row in enumerate(prompts):
        ids[b, width - row.shape[1]:], mask[b, width - row.shape[1]:] = row[0], 1
    from minireft.hf.model import attach

    ours = attach(tiny_model(), config)
    with torch.no_grad():
        for name, p in ours.interventions.named_parameters():
            p.copy_(torch.from_numpy(params[name]))
        logits = ours(input_ids=ids, attention_mask=mask).logits
    worst = max(relative(logits[b:b + 1, width - row.shape[1]:], pyreft_logits(reft, row, spec["positions"], False))
                for b, row in enumerate(prompts))
    print(f"left-padded batch: max relative |Δlogits| {worst:.2e}")
    assert worst <= RTOL
