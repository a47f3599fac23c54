"""Write tests/fixtures/pyreft/: folders saved by the real pyreft 0.1.0 (ReftModel.save), for a
tiny random Llama (hidden size 32, 3 blocks), and fixtures.json saying how each was built.

    pip install --no-deps pyreft==0.1.0 pyvene==0.1.8
    python scripts/make_pyreft_fixtures.py

pyreft's package __init__ imports its trainer, which imports Hugging Face `datasets`; minireft
does not use `datasets`, so when it is not installed `import_pyreft` registers an empty stand-in
(its Dataset and load_dataset refuse to be used) before importing pyreft. Model building,
save/load and the intervened forward do not touch it. tests/test_pyreft.py imports this file
for `import_pyreft`, `FIXTURES`, `build_pyreft` and `pyreft_locations`.
"""

from __future__ import annotations

import importlib.machinery
import json
import shutil
import sys
import types
import zlib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "tests" / "fixtures" / "pyreft"
HIDDEN = 32  # tests/tiny_models.py's hidden size

# name: (pyreft class, layers, rank, positions, tied). Untied folders hold two interventions per
# layer (#0 prefix, #1 suffix), as pyreft's examples build them (`layers += layers`).
FIXTURES = {
    "loreft_untied": ("LoreftIntervention", [0, 2], 4, "f2+l2", False),
    "loreft_tied": ("LoreftIntervention", [0, 1, 2], 3, "f3+l1", True),
    "direft_untied": ("DireftIntervention", [1, 2], 2, "f1+l3", False),
    "direft_tied": ("DireftIntervention", [0, 2], 4, "f2+l2", True),
    "nodireft_tied": ("NodireftIntervention", [1], 4, "l3", True),
    "consreft_untied": ("ConsreftIntervention", [2], 2, "f1+l1", False),
    "lobireft_tied": ("LobireftIntervention", [0], 2, "f2+l3", True),
}


def import_pyreft():
    """The pyreft package, importable without Hugging Face `datasets` (module docstring). The
    stand-in is removed from sys.modules again once pyreft holds it, so nothing else sees it."""
    if "pyreft" in sys.modules:
        return sys.modules["pyreft"]
    stub = None
    try:
        import datasets  # noqa: F401
    except ImportError:
        stub = types.ModuleType("datasets")
        stub.__spec__ = importlib.machinery.ModuleSpec("datasets", None)

        def unavailable(*args, **kwargs):
            raise ImportError("Hugging Face `datasets` is not installed (pyreft's trainer needs it)")

        stub.Dataset = type("Dataset", (), {"__init__": unavailable, "from_dict": staticmethod(unavailable)})
        stub.load_dataset = unavailable
        sys.modules["datasets"] = stub
    try:
        import pyreft
    finally:
        if stub is not None and sys.modules.get("datasets") is stub:
            del sys.modules["datasets"]
    return pyreft


def build_pyreft(model, name: str, *, folder=None):
    """pyreft's ReftModel for fixture `name` on `model`, interventions in float32 (as pyreft's
    examples build them, dtype passed); with `folder`, each intervention then loads its
    intkey_*.bin with its own load_state_dict."""
    import torch

    pyreft = import_pyreft()
    cls_name, layers, rank, _, tied = FIXTURES[name]
    cls = getattr(pyreft, cls_name)
    reps = [{"layer": layer, "component": "block_output", "low_rank_dimension": rank,
             "intervention": cls(embed_dim=HIDDEN, low_rank_dimension=rank, dtype=torch.float32, add_bias=True)}
            for layer in (layers if tied else layers + layers)]
    reft = pyreft.get_reft_model(model, pyreft.ReftConfig(representations=reps), set_device=False)
    if folder is not None:
        for key, intervention in reft.interventions.items():
            intervention.load_state_dict(torch.load(Path(folder) / f"intkey_{key}.bin", weights_only=True))
    return reft


def pyreft_locations(n: int, positions: str, num_interventions: int, tied: bool) -> list[list[int]]:
    """pyreft's own locations for a prompt of n tokens, as its dataset classes give them with
    pad_mode "first": get_intervention_locations(last_position=n) shifted by one for the pad
    token they prepend (its pad slots, -1, become that pad token, 0)."""
    pyreft = import_pyreft()
    locations = pyreft.get_intervention_locations(last_position=n, positions=positions, pad_mode="first",
                                                  num_interventions=num_interventions, share_weights=tied)
    return [[i + 1 for i in row] for row in locations]


def main() -> int:
    import torch

    sys.path.insert(0, str(ROOT / "tests"))
    import tiny_models

    shutil.rmtree(OUT, ignore_errors=True)
    OUT.mkdir(parents=True)
    manifest = {}
    for name, (cls_name, layers, rank, positions, tied) in FIXTURES.items():
        torch.manual_seed(zlib.crc32(name.encode()))
        model, _ = tiny_models.build("llama")
        build_pyreft(model, name).save(str(OUT / name))
        manifest[name] = {"class": cls_name, "layers": layers, "rank": rank, "positions": positions,
                          "tied": tied, "hidden_size": HIDDEN, "model": "tests/tiny_models.py llama"}
    (OUT / "fixtures.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    size = sum(f.stat().st_size for f in OUT.rglob("*") if f.is_file())
    print(f"wrote {len(FIXTURES)} pyreft folders, {size / 1e3:.0f} kB, to {OUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
