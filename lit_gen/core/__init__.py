"""lit-gen's ground floor: pieces every other package may use; nothing here imports from them."""

from lit_gen.core.seeds import ExampleGenerators, RandomSource

__all__ = ["ExampleGenerators", "RandomSource"]
