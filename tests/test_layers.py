"""Imports run one way: spec -> mirror -> hf -> demo, cli, serve.

Every import in minireft/, function-local ones included, is read with ast (nothing is
imported), and each layer may name nothing above it:

    spec         minireft/*.py but cli, __main__, pyreft: no torch, transformers, or any layer above
    conformance  runs the corpus against any backend: no layer above the spec (torch only
                 inside its array adapter, imported when a torch backend is checked)
    torch        the mirror: no transformers, hf, demo, serve, cli or pyreft
    hf           no demo, serve or cli
    demo         no serve or cli
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "minireft"
ABOVE_SPEC = ("minireft.torch", "minireft.hf", "minireft.demo", "minireft.serve", "minireft.cli",
              "minireft.pyreft")
FORBIDDEN = {
    "spec": ("torch", "transformers", "minireft.conformance", *ABOVE_SPEC),
    "conformance": ("transformers", *ABOVE_SPEC),
    "torch": ("transformers", *ABOVE_SPEC[1:]),
    "hf": ("minireft.demo", "minireft.serve", "minireft.cli"),
    "demo": ("minireft.serve", "minireft.cli"),
}


def layer_of(path: Path) -> str | None:
    """The layer of a module file under minireft/ (None: a top layer, free to import anything)."""
    parts = path.relative_to(PACKAGE).parts
    if len(parts) == 1:
        return None if parts[0] in ("cli.py", "__main__.py", "pyreft.py") else "spec"
    return parts[0] if parts[0] in FORBIDDEN else None


def imported_names(source: str, module: str) -> list[tuple[int, str]]:
    """(line, dotted name) of every import in `source`, the module's own dotted name resolving
    relative ones; `from minireft import hf` yields minireft.hf."""
    names = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                package = module.split(".")[: -node.level]
                base = ".".join(package + ([base] if base else []))
            names.append((node.lineno, base))
            names += [(node.lineno, f"{base}.{alias.name}") for alias in node.names]
    return names


def is_within(name: str, package: str) -> bool:
    return name == package or name.startswith(package + ".")


def violations() -> list[str]:
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        layer = layer_of(path)
        if layer is None:
            continue
        rel = path.relative_to(PACKAGE.parent)
        module = ".".join(rel.with_suffix("").parts)
        for line, name in imported_names(path.read_text(), module):
            bad = [p for p in FORBIDDEN[layer] if is_within(name, p)]
            allowed = layer == "conformance" and name == "torch" and path.name == "adapters.py"
            if bad and not allowed:
                found.append(f"{rel}:{line} imports {name} (the {layer} layer imports nothing from {bad[0]})")
    return found


def test_imports_run_one_way():
    found = violations()
    assert not found, "imports against the layer order:\n" + "\n".join(found)


def test_every_kind_of_import_is_seen():
    """Function-local, `from package import module` and relative imports all count."""
    source = ("def f():\n    import torch\n"
              "from minireft import hf\n"
              "from ..demo import datasets\n")
    names = [name for _, name in imported_names(source, "minireft.torch.edit")]
    assert "torch" in names and "minireft.hf" in names and "minireft.demo.datasets" in names, names
    assert layer_of(PACKAGE / "io.py") == "spec" and layer_of(PACKAGE / "cli.py") is None
    assert layer_of(PACKAGE / "hf" / "model.py") == "hf" and layer_of(PACKAGE / "serve" / "x.py") is None
