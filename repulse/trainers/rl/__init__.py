"""``repulse rl``: PPO-family RL and RePULSe, one controller loop over roles, rollout engines and methods.

``cli`` parses and validates; ``loop`` is the controller; ``local_roles`` the roles in this
process; ``methods`` the registry of RL methods; ``updates`` their per-micro-batch losses.
"""

from repulse.trainers.rl.cli import main, validate
from repulse.trainers.rl.loop import run

__all__ = ["main", "run", "validate"]
