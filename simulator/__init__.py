"""Fleet simulator: many devices running the real agent core on simulated hardware."""

__version__ = "0.1.0"
