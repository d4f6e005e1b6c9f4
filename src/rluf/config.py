"""Settings from YAML/JSON mappings and command-line pairs, validated the same way everywhere.

    python -c "from dataclasses import dataclass; from rluf.config import from_mapping; print(from_mapping(dataclass(type('C', (), {'__annotations__': {'k': int}, 'k': 1})), {'k': 2}, 'C', ValueError))"
"""

from __future__ import annotations

import dataclasses


def from_mapping(cls, data, where: str, error: type[Exception]):
    """`cls(**data)` for a dataclass `cls`; a non-mapping or an unknown key raises `error` naming `where` and the known keys."""
    if not isinstance(data, dict):
        raise error(f"{where}: expected a mapping, got {type(data).__name__}")
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise error(f"{where}: unknown key {unknown[0]!r}; known keys: {', '.join(sorted(known))}")
    return cls(**data)


def name_dir_pairs(specs, option: str = "--model", example: str = "love=runs/rm/love") -> dict[str, str]:
    """{"NAME": "DIR"} from command-line values "NAME=DIR"; a malformed one raises ValueError with an example."""
    pairs = {}
    for spec in specs:
        name, sep, path = spec.partition("=")
        if not sep or not name or not path:
            raise ValueError(f"{option} {spec!r}: expected NAME=DIR, e.g. {option} {example}")
        pairs[name] = path
    return pairs
