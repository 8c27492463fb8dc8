"""The package's shape is checked, not just described.

- The path of a file says which side of the wire it runs on: the import-linter
  contracts in pyproject.toml (the client imports nothing of the publisher or
  the capture side; the protocol and the job engine import no side).
- No import circles inside the package, counting imports inside functions
  (moving an import into a function hides a circle; it does not remove one).
- The type checker (mypy with django-stubs, configured in pyproject.toml) is
  clean on the package.
"""

import subprocess
import sys
from pathlib import Path

import grimp

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def run(*command: str) -> subprocess.CompletedProcess:
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)


def test_import_contracts_hold():
    result = run(str(BIN / "lint-imports"), "--no-cache")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "broken" not in result.stdout.split("Contracts:")[-1].split("kept")[0]


def circles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(module: str) -> None:
        index[module] = low[module] = len(index)
        stack.append(module)
        for other in edges[module]:
            if other not in index:
                visit(other)
                low[module] = min(low[module], low[other])
            elif other in stack:
                low[module] = min(low[module], index[other])
        if low[module] == index[module]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == module:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10_000))
    for module in sorted(edges):
        if module not in index:
            visit(module)
    return found


def package_imports() -> dict[str, set[str]]:
    graph = grimp.build_graph("pubsubpull", cache_dir=None)
    modules = {m for m in graph.modules if ".migrations" not in m and m != "pubsubpull"}
    return {
        m: {t for t in graph.find_modules_directly_imported_by(m) if t in modules} for m in modules
    }


def test_the_circle_finder_finds_a_circle():
    assert circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert circles({"a": {"b"}, "b": set()}) == []


def test_no_import_circles_inside_the_package():
    assert circles(package_imports()) == []


def test_the_type_checker_is_clean():
    result = run(sys.executable, "-m", "mypy")
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
