"""repulse: post-training for language models (SFT, RM, DPO, KTO, RL, RePULSe)."""

__version__ = "0.1.0"
