"""API keys: who may route messages and send feedback.

Keys come from a file (one per line, or ``sha256:HEX`` so the file itself holds no secret) and from
``$HEARKEN_API_KEYS`` (comma-separated). They are hashed as soon as they are read and only the
sha256 hashes stay in memory, so a heap dump or a debugger cannot leak a helpdesk's key. A presented
key is hashed and compared against every stored hash with ``hmac.compare_digest``, so response time
does not reveal how much of a guess was right. Keys are never logged: log lines name the key file
and line numbers only.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
from collections.abc import Iterable, Mapping
from pathlib import Path

from pipeline.errors import ConfigError

API_KEYS_ENV = "HEARKEN_API_KEYS"
HASH_PREFIX = "sha256:"
MIN_KEY_CHARS = 16
_HEX_DIGEST = re.compile(r"[0-9a-f]{64}")
_GENERATE_FIX = "generate keys with `python -c 'import secrets; print(secrets.token_urlsafe(32))'`"


def hash_key(key: str) -> str:
    """The hex sha256 of a key: what the key file may hold and what the service keeps."""
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def _parse_entry(entry: str, where: str) -> str:
    if entry.startswith(HASH_PREFIX):
        digest = entry[len(HASH_PREFIX) :].strip().lower()
        if not _HEX_DIGEST.fullmatch(digest):
            raise ConfigError(
                f"{where}: a `{HASH_PREFIX}` entry must be followed by 64 hex digits.",
                fix=f"write `{HASH_PREFIX}` followed by the output of `printf %s KEY | sha256sum`",
            )
        return digest
    if any(char.isspace() for char in entry):
        raise ConfigError(
            f"{where}: an API key contains whitespace.", fix="write one key per line, without spaces"
        )
    if len(entry) < MIN_KEY_CHARS:
        raise ConfigError(
            f"{where}: an API key is shorter than {MIN_KEY_CHARS} characters, which is guessable.",
            fix=_GENERATE_FIX,
        )
    return hash_key(entry)


def read_key_file(path: Path) -> set[str]:
    """Hashes of the keys in a key file; blank lines and ``#`` comments are ignored."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(
            f"Cannot read the API key file {path} ({exc.__class__.__name__}).",
            fix="check the path and that the service user may read it (it should be UTF-8 text)",
        ) from exc
    hashes = set()
    for number, line in enumerate(lines, start=1):
        entry = line.strip()
        if entry and not entry.startswith("#"):
            hashes.add(_parse_entry(entry, f"{path} line {number}"))
    return hashes


def read_key_env(value: str) -> set[str]:
    """Hashes of the comma-separated keys in ``$HEARKEN_API_KEYS``."""
    entries = [entry.strip() for entry in value.split(",")]
    return {
        _parse_entry(entry, f"{API_KEYS_ENV} entry {number}")
        for number, entry in enumerate(entries, start=1)
        if entry
    }


class ApiKeys:
    """The set of accepted keys, held as sha256 hashes only."""

    def __init__(self, hashes: Iterable[str] = ()) -> None:
        self._hashes: tuple[bytes, ...] = tuple(sorted({h.encode("ascii") for h in hashes}))

    @classmethod
    def load(cls, key_file: Path | None, environ: Mapping[str, str] | None = None) -> ApiKeys:
        """Keys from the file and the environment variable together (either may be absent)."""
        environ = os.environ if environ is None else environ
        hashes: set[str] = set()
        if key_file is not None:
            hashes |= read_key_file(key_file)
        if environ.get(API_KEYS_ENV):
            hashes |= read_key_env(environ[API_KEYS_ENV])
        return cls(hashes)

    def __len__(self) -> int:
        return len(self._hashes)

    def accepts(self, key: str) -> bool:
        """Constant-time membership: every stored hash is compared, whatever matches first."""
        candidate = hash_key(key).encode("ascii")
        found = False
        for stored in self._hashes:
            found |= hmac.compare_digest(candidate, stored)
        return found


def load_access(
    key_file: Path | None, insecure_no_auth: bool, environ: Mapping[str, str] | None = None
) -> ApiKeys | None:
    """The accepted keys, or None for an explicitly insecure service; refuses the ambiguous cases.

    No keys without the opt-in flag would be a service nobody can call (or, worse, one that someone
    "fixes" by turning auth off in code); keys *and* the flag would leave it unclear which was meant.
    """
    keys = ApiKeys.load(key_file, environ)
    if insecure_no_auth:
        if len(keys):
            raise ConfigError(
                "API keys are configured and --insecure-no-auth was given as well.",
                fix=f"drop --insecure-no-auth to require the keys, or unset {API_KEYS_ENV} and "
                "--api-keys-file",
            )
        return None
    if not len(keys):
        raise ConfigError(
            "No API keys are configured, so no client could call the service.",
            fix=f"pass --api-keys-file FILE or set {API_KEYS_ENV}=KEY1,KEY2; for local experiments only, "
            "pass --insecure-no-auth",
        )
    return keys
