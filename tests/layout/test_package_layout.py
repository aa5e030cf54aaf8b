"""The package's rooms and the direction of its imports (docs/architecture.md).

Every module of ctbpf/ belongs to one room. A room imports only the rooms
below it, and no import cycle exists anywhere, lazy imports inside functions
included: a cycle hidden in a function is still a cycle. Only the program's
entry point (ctbpf.main) imports the demo's lab. Pure Python: reads the
source, imports nothing of ctbpf.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "ctbpf"

# What each room holds: a module is in the room of its longest prefix here.
ROOMS = {
    "ctbpf": "foundation",            # __version__
    "ctbpf.errors": "foundation",     # the error types every room raises
    "ctbpf.abi": "foundation",        # bpf/abi.h, parsed: the C <-> Python contract
    "ctbpf.paths": "foundation",      # where the C sources are
    "ctbpf.tunables": "foundation",   # the tunables as data: names, slots, defaults
    "ctbpf.datapath": "datapath",     # what talks to the kernel
    "ctbpf.policy": "policy",         # enforce-mode policies: parse, compile, explain
    "ctbpf.agent": "agent",           # the long-running daemon
    "ctbpf.cli": "cli",               # the commands
    "ctbpf.lab": "lab",               # the demo's lab
    "ctbpf.main": "program",          # the `ctbpf` program: CLI + lab's demo
    "ctbpf.__main__": "program",      # python -m ctbpf
}

# Which rooms each room may import (its own included).
ALLOWED = {
    "foundation": {"foundation"},
    "datapath": {"foundation", "datapath"},
    "policy": {"foundation", "datapath", "policy"},
    "agent": {"foundation", "datapath", "policy", "agent"},
    "cli": {"foundation", "datapath", "policy", "agent", "cli"},
    "lab": {"foundation", "datapath", "policy", "agent", "cli", "lab"},
    "program": {"foundation", "cli", "lab", "program"},
}

LONG = 500   # lines; a longer module says why in its opening docstring
WHY_LONG = "Longer than 500 lines"


def module_name(path: Path, root: Path = PACKAGE) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules(root: Path = PACKAGE) -> dict[str, Path]:
    return {module_name(p, root): p for p in sorted(root.rglob("*.py"))}


def imports_of(name: str, path: Path, known: set[str]) -> set[str]:
    """The ctbpf modules a module imports, anywhere in its body."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[:len(package.split(".")) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            targets = [f"{mod}.{a.name}" if f"{mod}.{a.name}" in known else mod
                       for a in node.names]
        else:
            continue
        found |= {t for t in targets if t in known and t != name}
    return found


def graph(root: Path = PACKAGE) -> dict[str, set[str]]:
    mods = modules(root)
    return {name: imports_of(name, path, set(mods)) for name, path in mods.items()}


def room_of(name: str) -> str | None:
    """The room of a module: its longest prefix in ROOMS (the root package
    itself counts only as itself)."""
    best = max((p for p in ROOMS if name == p or (p != "ctbpf" and name.startswith(p + "."))),
               key=len, default=None)
    return ROOMS.get(best) if best else None


def cycles(g: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(g.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1 or v in g.get(v, ()):
                out.append(sorted(comp))

    for v in sorted(g):
        if v not in index:
            visit(v)
    return out


def wrong_way(g: dict[str, set[str]]) -> list[str]:
    """Every import that points up or sideways: 'a (room) -> b (room)'."""
    bad = []
    for a, targets in sorted(g.items()):
        ra = room_of(a)
        for b in sorted(targets):
            rb = room_of(b)
            if ra is None or rb is None or rb not in ALLOWED[ra]:
                bad.append(f"{a} ({ra}) -> {b} ({rb})")
    return bad


def lab_importers(g: dict[str, set[str]]) -> list[str]:
    return sorted(a for a, targets in g.items() if room_of(a) not in ("lab", "program")
                  and any(room_of(b) == "lab" for b in targets))


# --------------------------------------------------------------------------
# the package as it is


def test_every_module_has_a_room():
    assert [m for m in modules() if room_of(m) is None] == []


def test_no_import_cycle_anywhere():
    assert cycles(graph()) == []


def test_imports_point_one_way():
    assert wrong_way(graph()) == []


def test_only_the_program_imports_the_lab():
    g = graph()
    assert lab_importers(g) == []
    assert any(room_of(b) == "lab" for b in g["ctbpf.main"]), "ctbpf.main adds `ctbpf demo`"


def test_long_modules_say_why():
    long = {m: len(p.read_text().splitlines()) for m, p in modules().items()
            if len(p.read_text().splitlines()) > LONG}
    silent = [m for m, n in long.items()
              if WHY_LONG not in (ast.get_docstring(ast.parse(modules()[m].read_text())) or "")]
    assert silent == [], f"over {LONG} lines with no reason in the docstring: {long}"


def test_the_config_map_layout_lives_in_one_module():
    """One hop for a tunable: only ctbpf.datapath.configmap touches
    ct_config's layout (abi.CtConfig and its CT_CFG_* slots); ctbpf.tunables
    is the table of its slots."""
    users = []
    for name, path in modules().items():
        if name in ("ctbpf.datapath.configmap", "ctbpf.tunables", "ctbpf.abi"):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if (isinstance(node, ast.Attribute) and node.attr == "CtConfig") or \
                    (isinstance(node, ast.Constant) and isinstance(node.value, str)
                     and node.value.startswith("CT_CFG_")):
                users.append(f"{name}:{node.lineno}")
    assert users == []


# --------------------------------------------------------------------------
# the checks themselves catch what they are for


def _tree(tmp_path: Path, files: dict[str, str]) -> Path:
    root = tmp_path / "ctbpf"
    for rel, text in {"__init__.py": "", **files}.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
    return root


def test_a_wrong_way_import_is_caught(tmp_path):
    root = _tree(tmp_path, {
        "datapath/__init__.py": "",
        "datapath/loader.py": "def f():\n    from ctbpf.agent import daemon\n",
        "agent/__init__.py": "",
        "agent/daemon.py": "from ..datapath import loader\n",
        "cli/__init__.py": "",
        "cli/main.py": "from ctbpf.lab import demo\n",
        "lab/__init__.py": "",
        "lab/demo.py": "",
    })
    g = graph(root)
    assert "ctbpf.datapath.loader (datapath) -> ctbpf.agent.daemon (agent)" in wrong_way(g)
    assert "ctbpf.agent.daemon (agent) -> ctbpf.datapath.loader (datapath)" not in wrong_way(g)
    assert cycles(g) == [["ctbpf.agent.daemon", "ctbpf.datapath.loader"]]
    assert lab_importers(g) == ["ctbpf.cli.main"]


def test_a_module_outside_every_room_is_caught(tmp_path):
    root = _tree(tmp_path, {"stray.py": "from ctbpf import errors\n", "errors.py": ""})
    g = graph(root)
    assert room_of("ctbpf.stray") is None
    assert wrong_way(g) == ["ctbpf.stray (None) -> ctbpf.errors (foundation)"]
