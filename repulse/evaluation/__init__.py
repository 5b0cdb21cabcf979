"""evaluation floor of repulse."""
