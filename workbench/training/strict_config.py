"""Configs read from JSON refuse fields they do not know, naming them and the accepted ones."""

from __future__ import annotations


class StrictConfig:
    """Mixin for a config dataclass: ``from_dict`` rejects unknown fields (a typo in a JSON config
    must not silently fall back to a default)."""

    label = "config"

    @classmethod
    def from_dict(cls, values: dict):
        unknown = set(values) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"unknown {cls.label} field(s) {sorted(unknown)}; "
                             f"choose from: {', '.join(cls.__dataclass_fields__)}")
        return cls(**values)
