"""docs/tutorial.ipynb is committed without outputs, and the README's test command executes it."""
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_tutorial_has_no_outputs_and_runs_under_pytest(pytestconfig):
    nb = json.loads((ROOT / "docs" / "tutorial.ipynb").read_text())
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    assert len(code) >= 6
    assert all(c["outputs"] == [] and c["execution_count"] is None for c in code)
    assert "docs" in pytestconfig.getini("testpaths") and "--nbmake" in pytestconfig.getini("addopts")
    assert 'setdefault("VITKIT_TUTORIAL_QUICK", "1")' in (ROOT / "docs" / "conftest.py").read_text()
