"""Every Python snippet in README.md and docs/ runs as written, in order, file by file (one namespace per
file, in an empty working directory)."""

import re
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
def test_snippets_run_as_written(page, tmp_path, monkeypatch):
    pytest.importorskip("transformers")
    monkeypatch.chdir(tmp_path)
    namespace: dict = {"__name__": "__docs__"}
    for i, code in enumerate(snippets(page)):
        try:
            exec(compile(code, f"{page.name}[{i}]", "exec"), namespace)  # noqa: S102 - our own documentation
        except Exception as err:
            raise AssertionError(f"{page.name}, snippet {i + 1} fails: {type(err).__name__}: {err}\n{code}") from err
