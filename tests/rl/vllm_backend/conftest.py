"""The vLLM tests reuse the weight-sync peer (``tests/rl``) and the RL test setup (``tests/trainers``)."""

from __future__ import annotations

import sys
from pathlib import Path

TESTS = Path(__file__).resolve().parents[2]
for path in (TESTS, TESTS / "trainers", TESTS / "rl"):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))
