"""workflows floor of repulse."""
