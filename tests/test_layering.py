"""The import structure of `pcircuits` and `diffusion` follows the layer map of the design guide.

Every module of both packages is parsed with `ast`; every import counts,
at any depth (inside functions and ``if`` blocks too), so a lazy import
cannot hide a cycle. Checked:

* no import cycle between modules;
* `pcircuits` never imports `diffusion`;
* inside `pcircuits`, imports point down the layer map only:
  utilities < nodes, distributions < kernels < engine (with io) <
  region_graphs < queries < learning < structures < the package's facade,
  CLI and demo;
* the two lowest `diffusion` modules of the samplers stay low:
  `diffusion.proposals` imports no other `diffusion` module and the CoDD
  prior imports only `diffusion.proposals` from `diffusion`.

Known violations are listed in `ALLOWED`, each with its reason; a new
one fails the test.

Module names are dotted (``pcircuits.engine.circuit``); a package is named
by its folder (its ``__init__``). ``from pkg import name`` is an edge to
``pkg.name`` when that is a module, else to ``pkg``.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("pcircuits", "diffusion")

# Layer map of /work/shared/DESIGN.md, lowest first: a module may import modules of its own layer or below.
PCIRCUITS_LAYERS: tuple[tuple[str, ...], ...] = (
    ("pcircuits._index", "pcircuits.atomic", "pcircuits.distributed", "pcircuits.datasets"),  # utilities
    ("pcircuits.nodes", "pcircuits.distributions"),
    ("pcircuits.kernels",),
    ("pcircuits.engine", "pcircuits.io"),  # io saves and loads compiled circuits
    ("pcircuits.region_graphs",),
    ("pcircuits.queries",),
    ("pcircuits.learning",),
    ("pcircuits.structures",),
    ("pcircuits", "pcircuits.cli", "pcircuits.demo"),  # the public facade and the entry points
)

ALLOWED: dict[tuple[str, str], str] = {
    # The leaves' soft evidence calls the kernels' dispatch points (soft_evidence_lse, soft_evidence_max), one layer
    # up on the map.
    ("pcircuits.distributions.base", "pcircuits.kernels"): "leaf soft evidence through the kernel dispatch",
}

# diffusion modules that must stay at the bottom of the samplers, and the diffusion modules each may import.
DIFFUSION_FLOOR: dict[str, frozenset[str]] = {
    "diffusion.proposals": frozenset(),
    "diffusion.codd.prior": frozenset({"diffusion.proposals"}),
}


# ------------------------------------------------------------------------------------------- parsing
def module_files(root: Path = ROOT) -> dict[str, tuple[Path, bool]]:
    """Dotted module name -> (file, is a package ``__init__``) for every module of `PACKAGES`."""
    out = {}
    for pkg in PACKAGES:
        for path in sorted((root / pkg).rglob("*.py")):
            parts = list(path.relative_to(root).with_suffix("").parts)
            is_pkg = parts[-1] == "__init__"
            out[".".join(parts[:-1] if is_pkg else parts)] = (path, is_pkg)
    return out


def imported_modules(source: str, name: str, is_pkg: bool, known: set[str]) -> set[str]:
    """Modules of ``known`` that the module ``name`` imports anywhere in ``source``."""
    package = name.split(".") if is_pkg else name.split(".")[:-1]
    out: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                out.add(sub if sub in known else target)
    return {m for m in out if m in known and m != name}


def import_graph(root: Path = ROOT) -> dict[str, set[str]]:
    """Module -> the package modules it imports."""
    files = module_files(root)
    known = set(files)
    return {m: imported_modules(p.read_text(encoding="utf-8"), m, is_pkg, known) for m, (p, is_pkg) in files.items()}


def reachable(graph: dict[str, set[str]], start: str) -> set[str]:
    """Modules reachable from ``start`` by one or more imports."""
    seen: set[str] = set()
    todo = list(graph.get(start, ()))
    while todo:
        m = todo.pop()
        if m not in seen:
            seen.add(m)
            todo.extend(graph.get(m, ()))
    return seen


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Groups (sorted) of two or more modules that import each other, directly or through others."""
    reach = {m: reachable(graph, m) for m in graph}
    groups = {tuple(sorted(m2 for m2 in reach[m] if m in reach[m2])) for m in graph if m in reach[m]}
    return sorted(list(g) for g in groups if len(g) > 1)


def layer(module: str) -> int:
    """The rank of a `pcircuits` module in `PCIRCUITS_LAYERS`.

    An entry names a module or a subpackage (then all of its modules); the
    longest matching entry wins. The package itself (``"pcircuits"``) names
    only its ``__init__``, so a new top-level module must be placed on the map.
    """
    best, rank = -1, None
    for r, names in enumerate(PCIRCUITS_LAYERS):
        for prefix in names:
            inside = "." in prefix and module.startswith(prefix + ".")
            if (module == prefix or inside) and len(prefix) > best:
                best, rank = len(prefix), r
    if rank is None:
        raise AssertionError(f"{module} is not on the layer map: add it to PCIRCUITS_LAYERS")
    return rank


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    return import_graph()


# --------------------------------------------------------------------------------------- the checks
def test_the_parser_sees_lazy_and_relative_imports(graph):
    known = {"pkg", "pkg.a", "pkg.b", "pkg.sub", "pkg.sub.c"}
    src = "from . import c\nfrom .. import a\ndef f():\n    from ..b import X\n    import pkg.sub\n"
    assert imported_modules(src, "pkg.sub.d", False, known) == {"pkg.sub.c", "pkg.a", "pkg.b", "pkg.sub"}
    assert imported_modules(src, "pkg.sub", True, known) == {"pkg.sub.c", "pkg.a", "pkg.b"}  # never itself
    assert imported_modules("from .sub import c\n", "pkg", True, known) == {"pkg.sub.c"}
    # the real graph: a top-level edge and a function-level one
    assert "diffusion.proposals" in graph["diffusion.sampling"]
    assert "diffusion.sampling" in graph["diffusion.evaluation"]  # imported inside _generate_answers


def test_the_cycle_finder_finds_a_cycle_through_three_modules():
    g = {"a": {"b"}, "b": {"c"}, "c": {"a", "d"}, "d": set(), "e": {"e"}}
    assert cycles(g) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycle(graph):
    assert cycles(graph) == [], "import cycles between modules (lazy imports count)"


def test_pcircuits_never_imports_diffusion(graph):
    bad = sorted(
        (m, t) for m, ts in graph.items() if m.split(".")[0] == "pcircuits"
        for t in ts if t.split(".")[0] == "diffusion" and (m, t) not in ALLOWED
    )
    assert bad == [], f"pcircuits modules importing diffusion: {bad}"


def test_pcircuits_imports_point_down_the_layer_map(graph):
    bad = []
    for m, targets in sorted(graph.items()):
        if m.split(".")[0] != "pcircuits":
            continue
        for t in sorted(targets):
            if t.split(".")[0] == "pcircuits" and layer(t) > layer(m) and (m, t) not in ALLOWED:
                bad.append(f"{m} (layer {layer(m)}) imports {t} (layer {layer(t)})")
    assert bad == [], "upward imports:\n" + "\n".join(bad)


def test_every_pcircuits_module_is_on_the_map(graph):
    for m in graph:
        if m.split(".")[0] == "pcircuits":
            layer(m)


@pytest.mark.parametrize("module", sorted(DIFFUSION_FLOOR))
def test_the_samplers_lowest_modules_stay_low(graph, module):
    inside = {t for t in graph[module] if t.split(".")[0] == "diffusion"}
    assert inside <= DIFFUSION_FLOOR[module], f"{module} imports {sorted(inside - DIFFUSION_FLOOR[module])}"


def test_the_layer_checks_catch_an_upward_import():
    assert layer("pcircuits.engine.circuit") > layer("pcircuits.kernels.torch_ops")
    assert layer("pcircuits.queries.mpe") < layer("pcircuits.structures.hclt")
    with pytest.raises(AssertionError, match="layer map"):
        layer("pcircuits.somewhere_new")
