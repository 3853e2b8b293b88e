"""Model families. Each lives in its own subpackage (or module) and subclasses :class:`GenerativeModule`.

Families are found, not registered: every module and package in this folder is one, so a new family's
folder is all it takes for short ``class_path`` names (``class_path: VAE``) to resolve.
"""

from __future__ import annotations

import importlib
import pkgutil

from lit_gen.models.base import GenerativeModule


def family_modules() -> list[str]:
    """Every family module of this package (and of folders added to its ``__path__``), sorted by name."""
    return sorted(f"{__name__}.{info.name}" for info in pkgutil.iter_modules(__path__) if info.name != "base")


def import_families() -> None:
    for module in family_modules():
        importlib.import_module(module)


__all__ = ["GenerativeModule", "family_modules", "import_families"]
