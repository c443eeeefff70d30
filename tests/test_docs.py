"""Every Python snippet in README.md and docs/ runs as written, in order, file by file: one fresh Python process
per file (so a documented `alphaspec.x.y` works after a bare `import alphaspec`, as a user's script has it), in
an empty working directory."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def snippets(page: Path) -> list[str]:
    return re.findall(r"```python\n(.*?)```", page.read_text(), re.S)


def test_the_docs_have_snippets():
    assert sum(len(snippets(p)) for p in PAGES) >= 8


@pytest.mark.slow
@pytest.mark.parametrize("page", [p for p in PAGES if snippets(p)], ids=lambda p: p.name)
def test_snippets_run_as_written(page, tmp_path):
    pytest.importorskip("transformers")
    runner = ("import sys\nnamespace = {'__name__': '__docs__'}\n"
              "for i, code in enumerate(sys.argv[1:]):\n"
              "    try:\n        exec(compile(code, f'snippet {i + 1}', 'exec'), namespace)\n"
              "    except Exception as err:\n"
              "        sys.exit(f'snippet {i + 1} fails: {type(err).__name__}: {err}\\n{code}')\n")
    proc = subprocess.run([sys.executable, "-c", runner, *snippets(page)], cwd=tmp_path, capture_output=True,
                          text=True, timeout=900)
    assert proc.returncode == 0, f"{page.name}: {proc.stderr[-3000:]}"
