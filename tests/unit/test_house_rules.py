"""House rules as tests: the layer contracts and the AST rules of STYLE.md section 10."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("appliance", "consensus", "fastpath", "ops", "images")
MAX_FUNCTION_LINES = 70
CLOCK_MODULE = ROOT / "appliance" / "clock.py"
STDLIB = set(sys.stdlib_module_names)


def source_files() -> list[Path]:
    files = []
    for package in PACKAGES:
        files.extend(p for p in (ROOT / package).rglob("*.py") if "_cairn_fastpath" not in p.name)
    return sorted(files)


def parsed(path: Path) -> ast.Module:
    return ast.parse(path.read_text(), filename=str(path))


def relative(path: Path) -> str:
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def imported_modules(tree: ast.Module) -> list[str]:
    names = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.append(node.module)
    return names


def test_import_linter_contracts_hold():
    """The layer table of DESIGN.md holds, as checked by import-linter."""
    lint = Path(sys.executable).with_name("lint-imports")
    result = subprocess.run([str(lint)], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize(
    ("package", "allowed"),
    [
        ("appliance/model", {"cbor2", "immutables", "appliance.model"}),
        ("ops", {"appliance.model", "fastpath", "images", "ops"}),
        ("fastpath", {"cffi", "fastpath"}),
        ("images", {"images"}),
        ("consensus", {"trio", "pysyncobj", "cbor2", "consensus"}),
    ],
)
def test_pure_layers_import_only_what_they_may(package, allowed):
    """Pure layers import only the standard library and their allowed packages."""
    offenders = []
    for path in sorted((ROOT / package).rglob("*.py")):
        for name in imported_modules(parsed(path)):
            top = name.split(".")[0]
            if top in STDLIB or top == "__future__":
                continue
            if not any(name == a or name.startswith(a + ".") for a in allowed):
                offenders.append(f"{relative(path)} imports {name}")
    assert not offenders, "\n".join(offenders)


def test_every_module_has_a_docstring():
    """Every module opens with a docstring saying what lives there."""
    missing = [relative(p) for p in source_files() if not ast.get_docstring(parsed(p))]
    assert not missing, "modules without a docstring:\n" + "\n".join(missing)


def test_no_function_is_longer_than_the_limit():
    """No function is longer than 70 lines."""
    long = []
    for path in source_files():
        for node in ast.walk(parsed(path)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                if length > MAX_FUNCTION_LINES:
                    long.append(f"{relative(path)}:{node.lineno} {node.name} has {length} lines")
    assert not long, "\n".join(long)


def banned_calls(path: Path) -> list[str]:
    tree = parsed(path)
    problems = []
    in_cli = "appliance/cli" in relative(path)
    for name in imported_modules(tree):
        if name.split(".")[0] in ("pickle", "cPickle", "dill", "cloudpickle"):
            problems.append(f"imports {name}")
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            func = node.func
            if isinstance(func, ast.Name) and func.id == "print" and not in_cli:
                problems.append(f"line {node.lineno}: print outside the CLI")
            if isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name):
                dotted = f"{func.value.id}.{func.attr}"
                if dotted in ("time.time", "time.monotonic") and path != CLOCK_MODULE:
                    problems.append(f"line {node.lineno}: {dotted} outside appliance/clock.py")
    for statement in tree.body:
        if isinstance(statement, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            continue
        for node in ast.walk(statement):
            if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
                    and node.value.id == "random" and isinstance(node.ctx, ast.Load)):
                problems.append(f"line {node.lineno}: module-level random.{node.attr}")
    return problems


def test_banned_calls_are_absent():
    """No pickle anywhere, the clock only in the clock module, no module-level random, print only in the CLI."""
    problems = [f"{relative(p)}: {issue}" for p in source_files() for issue in banned_calls(p)]
    assert not problems, "\n".join(problems)


def test_the_rule_checker_catches_a_banned_call(tmp_path):
    """The banned-call checker flags pickle, the clock, print and module-level random."""
    bad = tmp_path / "bad.py"
    bad.write_text('"""Bad."""\nimport pickle\nimport random\nimport time\nX = random.random()\n'
                   "def f():\n    print(time.time())\n")
    found = " ".join(banned_calls(bad))
    for word in ("pickle", "time.time", "print", "random.random"):
        assert word in found


def import_cycles(package: str) -> list[str]:
    """Every pair of modules of `package` that import each other, directly or through others, with
    imports inside functions counted: a lazy import hides a cycle from Python, not from a reader."""
    import grimp  # comes with import-linter

    graph = grimp.build_graph(package, cache_dir=None)
    cycles = []
    for importer in sorted(graph.modules):
        for imported in sorted(graph.find_modules_directly_imported_by(importer)):
            back = graph.find_shortest_chain(importer=imported, imported=importer)
            if back is not None and importer < imported:
                cycles.append(f"{importer} imports {imported}, which imports it back: {' -> '.join(back)}")
    return cycles


def test_fastpath_has_no_import_cycle():
    """No module of fastpath imports itself back through another; what two modules both need lives
    in a third that imports neither (as `fastpath.session` does for iallocator and evacuate)."""
    cycles = import_cycles("fastpath")
    assert not cycles, "\n".join(cycles)


def test_the_cycle_checker_catches_a_lazy_import_cycle(tmp_path, monkeypatch):
    """The cycle checker finds two modules that import each other, one of them inside a function."""
    package = tmp_path / "cyclic"
    package.mkdir()
    (package / "__init__.py").write_text('"""A package with a cycle."""\n')
    (package / "a.py").write_text('"""A."""\nfrom cyclic.b import g\n')
    (package / "b.py").write_text('"""B."""\n\ndef g():\n    from cyclic.a import g as f\n    return f\n')
    monkeypatch.syspath_prepend(str(tmp_path))
    assert import_cycles("cyclic") == ["cyclic.a imports cyclic.b, which imports it back: cyclic.b -> cyclic.a"]
