"""difflung: reproducible companion to Diff-Lung (mask-guided lung CT diffusion with CBMAT)."""
__version__ = "0.1.0"
