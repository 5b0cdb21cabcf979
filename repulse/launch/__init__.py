"""launch floor of repulse."""
