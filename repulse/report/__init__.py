"""report floor of repulse."""
