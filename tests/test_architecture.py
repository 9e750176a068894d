"""The layout's rules (docs/architecture.md): import-linter's contracts in pyproject.toml hold
(layers point down, tasks independent, models free of training code, no import circles)."""
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_import_contracts_hold(tmp_path):
    lint = shutil.which("lint-imports") or str(Path(sys.executable).parent / "lint-imports")
    if not Path(lint).exists():
        pytest.skip("import-linter is not installed (pip install -e '.[dev]')")
    # --no-cache: nothing written into the repository
    r = subprocess.run([lint, "--no-cache", str(ROOT / "pyproject.toml")], cwd=ROOT,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]
    assert "4 kept, 0 broken" in r.stdout, r.stdout[-2000:]
