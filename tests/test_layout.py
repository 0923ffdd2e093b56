"""The house plan holds: no import circles between files, nothing in model/ imports a room above
it (apart from the one documented arrow, adapter loading), no high-level framework in project
code, and the scripts read in screens, not pages."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NOT_PROJECT_CODE = {"tests", "bench", "notebooks", ".git", ".venv", "venv", ".ci"}
FORBIDDEN = {"transformers", "peft", "trl", "unsloth", "accelerate", "langchain", "autogen"}
# model/ is the bottom room; the one arrow that runs back up is load_model(adapter=...).
UPWARD_ALLOWED = {("model/checkpoint/load.py", "lora/peft_format.py")}


def project_files() -> list[Path]:
    return [p for p in sorted(ROOT.rglob("*.py")) if p.relative_to(ROOT).parts[0] not in NOT_PROJECT_CODE]


def module_file(module: str) -> Path | None:
    """The project file a dotted module name is: a.b -> a/b.py or a/b/__init__.py."""
    base = ROOT.joinpath(*module.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def imported_files(path: Path) -> set[Path]:
    """Every project file `path` imports, at the top or inside a function."""
    package = ".".join(path.relative_to(ROOT).with_suffix("").parts[:-1])
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            modules = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(p for p in parts + [node.module or ""] if p)
            else:
                base = node.module
            # `from a import b`: b is a module when a/b.py exists, else a name in a.
            modules = [f"{base}.{a.name}" if module_file(f"{base}.{a.name}") else base
                       for a in node.names]
        else:
            continue
        for module in modules:
            file = module_file(module)
            if file is not None and file != path:
                found.add(file)
    return found


def rel(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


def test_no_import_circles_between_files():
    graph = {p: imported_files(p) for p in project_files()}
    # Tarjan's strongly connected components: any component of two or more files is a circle.
    index, low, stack, on_stack, circles, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(rel(w))
                if w == v:
                    break
            if len(component) > 1:
                circles.append(sorted(component))

    for v in graph:
        if v not in index:
            visit(v)
    assert circles == []


def test_model_imports_nothing_above_it_but_the_adapter_loader():
    upward = set()
    for path in project_files():
        if rel(path).startswith("model/"):
            for file in imported_files(path):
                if not rel(file).startswith("model/"):
                    upward.add((rel(path), rel(file)))
    assert upward == UPWARD_ALLOWED


def test_project_code_never_imports_a_high_level_framework():
    used = set()
    for path in project_files():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module] if isinstance(node, ast.ImportFrom) and node.level == 0 else []
            used |= {(rel(path), n) for n in names if n.split(".")[0] in FORBIDDEN}
    assert used == set()


def test_no_function_in_the_train_and_evaluate_scripts_is_over_80_lines():
    long = []
    for script in ("train.py", "evaluate.py"):
        for node in ast.walk(ast.parse((ROOT / script).read_text(encoding="utf-8"))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > 80:
                    long.append(f"{script}:{node.name} ({lines} lines)")
    assert long == []


def test_the_public_surface_holds():
    from model import load_model, load_tokenizer
    assert callable(load_model) and callable(load_tokenizer)
