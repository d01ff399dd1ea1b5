"""Plugins by name: a registered one (``"fabric"``, ``"carbon"``) or ``module:Class``. Pure."""

from __future__ import annotations

import importlib


def resolve(name: str, registry: dict[str, type], base: type, kind: str) -> type:
    """The class ``name`` stands for; a ValueError that lists the known names otherwise."""
    if ":" in name:
        module, _, attr = name.partition(":")
        try:
            cls = getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError, ValueError) as exc:
            raise ValueError(f"cannot load {kind} {name!r}: {exc}") from None
        if not (isinstance(cls, type) and issubclass(cls, base)):
            raise ValueError(f"{name!r} is not a {base.__name__}")
        return cls
    if name not in registry:
        raise ValueError(f"unknown {kind} {name!r}; known: {', '.join(sorted(registry))}")
    return registry[name]
