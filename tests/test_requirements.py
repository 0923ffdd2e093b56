"""What project code imports is installed by requirements.txt: the README's first command
works on a machine that has only the runtime requirements (not the test ones)."""

import ast
import importlib.metadata as md
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NOT_PROJECT_CODE = {"tests", "bench", "notebooks", ".git", ".venv", "venv"}


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _runtime_requirements() -> set[str]:
    names = {"torch"}                           # installed by its own README command
    for line in (ROOT / "requirements.txt").read_text().splitlines():
        m = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", line.split("#")[0])
        if m:
            names.add(_norm(m.group(1)))
    return names


def _optional(node, parents) -> bool:
    """An import inside `try: ... except ImportError` is optional by design."""
    return any(isinstance(p, ast.Try) and any(
        isinstance(h.type, ast.Name) and h.type.id in ("ImportError", "ModuleNotFoundError")
        for h in p.handlers) for p in parents)


def _third_party_imports():
    local = {p.stem if p.is_file() else p.name for p in ROOT.iterdir()}
    for path in sorted(ROOT.rglob("*.py")):
        rel = path.relative_to(ROOT)
        if rel.parts[0] in NOT_PROJECT_CODE:
            continue
        stack = [(ast.parse(path.read_text(encoding="utf-8")), [])]
        while stack:
            node, parents = stack.pop()
            stack += [(child, parents + [node]) for child in ast.iter_child_nodes(node)]
            if isinstance(node, ast.Import):
                modules = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                modules = [node.module]
            else:
                continue
            for module in modules:
                top = module.split(".")[0]
                if top not in sys.stdlib_module_names and top not in local and not _optional(node, parents):
                    yield top, f"{rel}:{node.lineno}"


def test_every_third_party_import_of_project_code_is_named_in_requirements_txt():
    required, dists = _runtime_requirements(), md.packages_distributions()
    missing = sorted({f"{top} ({where})" for top, where in _third_party_imports()
                      if not any(_norm(d) in required for d in dists.get(top, [top]))})
    assert missing == []
