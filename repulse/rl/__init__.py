"""rl floor of repulse."""
