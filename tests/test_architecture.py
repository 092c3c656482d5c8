"""The layering docs/architecture.md states, checked on the source: data flows one way.

* the shared kernel (``cotmod/_*.py``) imports no cotmod package;
* the core layers (policy → prompting → backends → engine → batch → evals → governance) import only
  the kernel and the layers before them;
* the sibling streams (classifiers, audit, serve, integrations) import the kernel and the core,
  never the CLI; nothing but the CLI (and ``cotmod/__main__``) imports the CLI.

Every ``from ... import`` counts, including the lazy ones inside functions.
"""

from __future__ import annotations

import ast
from pathlib import Path

from .conftest import ROOT

PKG = ROOT / "cotmod"
CORE = ["policy", "prompting", "backends", "engine", "batch", "evals", "governance"]
SIBLINGS = {"classifiers", "audit", "serve", "integrations", "testing"}  # testing: the public test doubles


def _module(path: Path) -> list[str]:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return parts[:-1] if parts[-1] == "__init__" else parts


def _imports(path: Path, source: str | None = None) -> list[tuple[int, list[str]]]:
    """(line, imported module as parts) for every cotmod import of ``path`` (or of ``source``
    read as if it were that file)."""
    here = _module(path)
    package = here if path.name == "__init__.py" else here[:-1]
    out = []
    for node in ast.walk(ast.parse(source if source is not None else path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - (node.level - 1)]
                target = base + (node.module.split(".") if node.module else [])
            else:
                target = (node.module or "").split(".")
            # `from . import x` / `from cotmod import _config`: the names are the modules
            names = [[*target, a.name] for a in node.names] if node.module is None or target == ["cotmod"] else [target]
            out += [(node.lineno, t) for t in names if t and t[0] == "cotmod"]
        elif isinstance(node, ast.Import):
            out += [(node.lineno, a.name.split(".")) for a in node.names if a.name.split(".")[0] == "cotmod"]
    return out


def _layer(parts: list[str]) -> str:
    """'root' (cotmod itself), 'kernel', a core layer, a sibling or 'cli'."""
    if len(parts) == 1:
        return "root"
    head = parts[1]
    if head.startswith("_"):
        return "kernel"
    return head


def _violations(path: Path, source: str | None = None) -> list[str]:
    me = _module(path)
    mine = _layer(me)
    if mine in ("root", "cli") or me[-1] == "__main__":
        return []
    wrong = []
    for line, target in _imports(path, source):
        theirs = _layer(target)
        if theirs in ("kernel", mine):
            continue
        if mine == "kernel":
            ok = False
        elif mine in CORE:
            ok = theirs in CORE and CORE.index(theirs) < CORE.index(mine)
        elif mine in SIBLINGS:
            ok = theirs in CORE or theirs in SIBLINGS
        else:  # a new package: place it in CORE or SIBLINGS (and in docs/architecture.md)
            ok = False
        if not ok:
            wrong.append(f"{path.relative_to(ROOT)}:{line}: {'.'.join(me)} ({mine}) imports {'.'.join(target)} ({theirs})")
    return wrong


def test_imports_follow_the_layers() -> None:
    assert [v for path in sorted(PKG.rglob("*.py")) for v in _violations(path)] == []


def test_the_check_sees_a_lazy_upward_import() -> None:
    """The check can fail: lint importing from prompting inside a function (as it once did), or
    the kernel importing a package, is listed."""
    lint = PKG / "policy" / "_lint.py"
    late = lint.read_text(encoding="utf-8") + "\n\ndef _late() -> None:\n    from ..prompting._logic import parse_logic\n"
    assert [v.split(": ", 1)[1] for v in _violations(lint, late)] == [
        "cotmod.policy._lint (policy) imports cotmod.prompting._logic (prompting)"
    ]
    config = PKG / "_config.py"
    assert _violations(config, "from .policy._model import Policy\n") == [
        "cotmod/_config.py:1: cotmod._config (kernel) imports cotmod.policy._model (policy)"
    ]
