"""The package's shape: no import cycle, no file over 400 lines, models that are plain PyTorch (nothing from accel/,
training/ or the CLI), and a CLI that lists its verbs and presets without importing torch."""

import ast
import subprocess
import sys
from pathlib import Path

import vaelab

PACKAGE = Path(vaelab.__file__).parent


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> set[str]:
    """The vaelab modules ``path`` imports, at load time or inside functions (``TYPE_CHECKING`` blocks aside)."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            node.body = []
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                target = f"{base}.{node.module}" if node.module else base
            else:
                target = node.module or ""
            if target.startswith("vaelab"):
                found.add(target)
                found.update(f"{target}.{a.name}" for a in node.names)  # "from . import x" imports module x
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("vaelab"))
    return found


def test_the_package_has_no_import_cycle():
    modules = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph = {m: {t for t in imports_of(p) if t in modules and t != m} for m, p in modules.items()}
    state: dict[str, str] = {}

    def visit(m, path):
        state[m] = "open"
        for t in sorted(graph[m]):
            assert state.get(t) != "open", "import cycle: " + " -> ".join([*path, m, t])
            if t not in state:
                visit(t, [*path, m])
        state[m] = "done"

    for m in sorted(graph):
        if m not in state:
            visit(m, [])


def test_models_are_plain_pytorch():
    """Speed code lives behind vaelab.accel; the models import nothing from it, from training or from the CLI."""
    for path in (PACKAGE / "models").glob("*.py"):
        for target in imports_of(path):
            assert not target.startswith(("vaelab.accel", "vaelab.training", "vaelab.cli")), (path.name, target)


def test_help_and_presets_answer_without_importing_torch():
    code = ("import sys; from typer.testing import CliRunner; from vaelab.cli import app; runner = CliRunner(); "
            "listed = runner.invoke(app, ['presets']); helped = runner.invoke(app, ['--help']); "
            "print(listed.exit_code, helped.exit_code, 'vae-mnist' in listed.output, 'evaluate' in helped.output, "
            "'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["0", "0", "True", "True", "False"]


def test_no_source_file_is_over_400_lines():
    """The house's bound (issue 42): a file that grows past it is split where its rooms are."""
    long = {str(p.relative_to(PACKAGE)): n for p in PACKAGE.rglob("*.py") if (n := len(p.read_text().splitlines())) > 400}
    assert not long, f"over 400 lines: {long}"
