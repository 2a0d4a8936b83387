"""The package's layout as docs/architecture.md states it: the code map and the import direction."""

from __future__ import annotations

import ast
import re
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
PACKAGE = REPO_ROOT / "flaxmnist"
# A code-map line: tree drawing, then a file or folder name (folders end in "/").
MAP_ENTRY = re.compile(r"^(?P<indent>(?:│   |    )*)[├└]── (?P<name>[\w.]+/?)")
# The pipeline's lower stages, and the one module above them they may use (atomic writes).
LOWER_STAGES = ("data", "models", "losses.py", "optimizers.py")
ABOVE_THEM = ("flaxmnist.training", "flaxmnist.evaluation", "flaxmnist.storage")
ALLOWED_FROM_ABOVE = {"flaxmnist.storage.files"}


def code_map_paths(text: str) -> list[Path]:
    """The paths the code blocks of ``text`` draw as trees (``flaxmnist/`` ... ``└── name``)."""
    paths, parents = [], []
    for block in text.split("```")[1::2]:
        for line in block.splitlines():
            if re.fullmatch(r"[\w.]+/", line.strip()):  # a tree's root: "flaxmnist/"
                parents = [line.strip().rstrip("/")]
                continue
            entry = MAP_ENTRY.match(line)
            if entry is None or not parents:
                continue
            depth = len(entry["indent"]) // 4 + 1
            name = entry["name"]
            parents = [*parents[:depth], name.rstrip("/")]
            paths.append(Path(*parents))
    return paths


def test_every_file_and_folder_of_the_code_map_exists():
    paths = code_map_paths((REPO_ROOT / "docs" / "architecture.md").read_text())
    assert len(paths) > 60  # the whole package and tools/, not a tree the parser lost
    assert {p.parts[0] for p in paths} == {"flaxmnist", "tools"}
    assert [str(p) for p in paths if not (REPO_ROOT / p).exists()] == []


def test_the_code_map_lists_every_module_of_the_package():
    mapped = set(code_map_paths((REPO_ROOT / "docs" / "architecture.md").read_text()))
    # A folder the map lists without its files (configs/: a file per preset) covers them.
    leaves = {p for p in mapped if not any(p in other.parents for other in mapped)}
    modules = {
        path.relative_to(REPO_ROOT)
        for path in PACKAGE.rglob("*.py")
        if path.name != "__init__.py" and "serve_page" not in path.parts
    }
    unmapped = [m for m in modules if m not in mapped and not leaves & set(m.parents)]
    assert sorted(map(str, unmapped)) == []


def imported_modules(path: Path) -> set[str]:
    """The flaxmnist modules ``path`` imports (``from flaxmnist import x`` counts as ``.x``)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return {name for name in names if name.startswith("flaxmnist.")}


def test_the_pipeline_s_lower_stages_import_nothing_above_them_but_atomic_writes():
    files = [
        path
        for stage in LOWER_STAGES
        for path in (
            [PACKAGE / stage] if stage.endswith(".py") else (PACKAGE / stage).rglob("*.py")
        )
    ]
    assert len(files) > 10
    upward = {
        f"{path.relative_to(REPO_ROOT)}: {name}"
        for path in files
        for name in imported_modules(path)
        if name.startswith(ABOVE_THEM)
        and not any(name == ok or name.startswith(f"{ok}.") for ok in ALLOWED_FROM_ABOVE)
    }
    assert upward == set()


def test_the_import_check_sees_both_import_forms(tmp_path):
    module = tmp_path / "m.py"
    module.write_text(
        "import flaxmnist.training.loop\nfrom flaxmnist import evaluation\n"
        "from flaxmnist.storage import files\nimport numpy\nfrom . import sibling\n"
    )
    assert imported_modules(module) == {
        "flaxmnist.training.loop",
        "flaxmnist.evaluation",
        "flaxmnist.storage.files",
    }
