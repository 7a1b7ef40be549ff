"""YAML parsing for Hearken's data files (policies, lexicons, catalogues, training configs).

Why a module for one function: the signal lexicon alone is ~130 KB of YAML, and PyYAML's pure
Python parser spends about half a second on it — a sixth of the cold-start budget. libyaml's C
parser (``CSafeLoader``, shipped in PyYAML's wheels) reads the same documents with the same
safe constructors about ten times faster; the pure-Python loader remains the fallback.
"""

from __future__ import annotations

from typing import Any

import yaml

SafeLoader: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def parse_yaml(text: str) -> Any:
    """Parse one YAML document with safe constructors only (no Python objects, ever)."""
    return yaml.load(text, Loader=SafeLoader)
