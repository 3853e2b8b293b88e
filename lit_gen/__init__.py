"""lit-gen: deep generative models as Lightning modules behind one protocol."""

__version__ = "0.1.0"
