"""Every test marked ``vllm`` lies under a path that ``make test-vllm`` runs.

The main venv skips those tests (no vLLM there) and ``make test-vllm`` runs only the paths in the
Makefile's ``VLLM_TESTS`` (collecting the whole suite in .venv-vllm would fail on the extras it
lacks), so a vLLM test written anywhere else would never run at all.
"""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
MARK = re.compile(r"pytest\.mark\.vllm\b")


def vllm_test_paths() -> list[str]:
    makefile = (ROOT / "Makefile").read_text()
    match = re.search(r"^VLLM_TESTS\s*\??=\s*(.+)$", makefile, re.MULTILINE)
    assert match, "the Makefile defines no VLLM_TESTS"
    return match.group(1).split()


def test_every_vllm_marked_module_is_run_by_make_test_vllm():
    paths = vllm_test_paths()
    marked = sorted(
        p.relative_to(ROOT).as_posix()
        for p in (ROOT / "tests").rglob("test_*.py")
        if MARK.search(p.read_text())
    )
    assert len(marked) >= 5  # the backend, sync, RL, generate and seed-command tests
    missed = [m for m in marked if not any(m == p or m.startswith(p.rstrip("/") + "/") for p in paths)]
    assert not missed, f"vLLM tests that make test-vllm does not run: {missed}; add them to VLLM_TESTS"
