"""The vLLM tests reuse the weight-sync peer and helpers in ``tests/rl``."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
