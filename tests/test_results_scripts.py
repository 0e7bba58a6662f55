"""RESULTS.md and BENCHMARKS.md name the scripts that regenerate their numbers: those scripts exist, parse, and
scripts/results-all.sh runs every one of them."""

import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = sorted((ROOT / "scripts").glob("results-*.sh"))


@pytest.mark.parametrize("doc", ["RESULTS.md", "BENCHMARKS.md"])
def test_every_script_a_document_names_exists(doc):
    named = set(re.findall(r"scripts/[\w.-]+\.(?:sh|py)", (ROOT / doc).read_text(encoding="utf-8")))
    assert named, f"{doc} names no script"
    missing = sorted(n for n in named if not (ROOT / n).is_file())
    assert not missing, f"{doc} names scripts that do not exist: {missing}"


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_results_scripts_parse(script):
    proc = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_results_all_runs_every_results_script():
    text = (ROOT / "scripts" / "results-all.sh").read_text(encoding="utf-8")
    listed = set(re.findall(r"\bresults-[\w-]+", text)) - {"results-all"}
    assert listed == {p.stem for p in SCRIPTS} - {"results-all"}
