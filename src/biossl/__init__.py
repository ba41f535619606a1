"""biossl: biologically plausible self-supervised learning rules next to their BP baselines."""
__version__ = "0.1.0"
