"""YAML parsing for Hearken's data files (policies, lexicons, catalogues, training configs).

Why a module for one function: the signal lexicon alone is ~130 KB of YAML, and PyYAML's pure
Python parser spends about half a second on it — a sixth of the cold-start budget. libyaml's C
parser (``CSafeLoader``, shipped in PyYAML's wheels) reads the same documents with the same
safe constructors about ten times faster; the pure-Python loader remains the fallback.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from pipeline.errors import ConfigError

SafeLoader: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def parse_yaml(text: str) -> Any:
    """Parse one YAML document with safe constructors only (no Python objects, ever)."""
    return yaml.load(text, Loader=SafeLoader)


def read_yaml_file(
    path: Path, what: str, *, missing_fix: str, syntax_fix: str, text: str | None = None
) -> Any:
    """Read and parse a UTF-8 YAML file; every failure is a ``ConfigError`` that names ``what`` and the file.

    One reader for the catalogue and the signal lexicon, so a missing, unreadable or malformed file
    is reported in the same words whichever it is; the fixes differ because the remedies do. A YAML
    error is put on one line (PyYAML's spans several) so that it stays one log record.

    ``text``: the file's content when the caller has already read it (a policy bundle hashes the
    text it read; parsing that same text, not a second read, keeps the hash true to what is used).
    """
    try:
        return parse_yaml(text if text is not None else path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise ConfigError(f"{what} {path} not found: the path does not exist.", fix=missing_fix) from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{what} {path} cannot be read: {exc}.", fix="save it as UTF-8 text") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(
            f"{what} {path} is not valid YAML: {' '.join(str(exc).split())}", fix=syntax_fix
        ) from exc
