"""The module map (docs/modules.md) is what ``docs/module_map.py`` writes from the docstrings."""

from __future__ import annotations

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_the_module_map_is_current_and_names_every_module() -> None:
    spec = importlib.util.spec_from_file_location("module_map", ROOT / "docs" / "module_map.py")
    assert spec is not None
    assert spec.loader is not None
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    written = (ROOT / "docs" / "modules.md").read_text()
    assert written == script.module_map(), "run: python docs/module_map.py"
    modules = sorted(
        p.relative_to(root.parent).as_posix()
        for root in script.PACKAGES.values()
        for p in root.rglob("*.py")
    )
    assert all(f"| `{name}` |" in written for name in modules)
    assert "_jwt.py" in written  # the map reads the tree, not a list kept by hand
