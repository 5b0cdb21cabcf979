"""losses floor of repulse."""
