"""trainers floor of repulse."""
