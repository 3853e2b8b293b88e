"""Model families. Each lives in its own subpackage and subclasses :class:`GenerativeModule`."""

from __future__ import annotations

import importlib

from lit_gen.models.base import GenerativeModule

#: Modules that define families; imported by the CLI so that short ``class_path`` names resolve.
FAMILY_MODULES = (
    "lit_gen.models.factorized",
    "lit_gen.models.vae",
    "lit_gen.models.autoregressive",
    "lit_gen.models.gan",
    "lit_gen.models.ebm",
    "lit_gen.models.flow",
    "lit_gen.models.diffusion",
)


def import_families() -> None:
    for module in FAMILY_MODULES:
        importlib.import_module(module)


__all__ = ["GenerativeModule", "FAMILY_MODULES", "import_families"]
