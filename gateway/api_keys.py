"""API keys: who may call the gateway, as which tenant, and how fast.

The gateway never keeps a key, only its SHA-256 hex digest: keys written in the environment are
hashed as they are read, and the keys file holds digests only (`dualpath keys hash` prints one).

Keys file (YAML; `DUALPATH_API_KEYS_FILE` or `--api-keys-file`):

    keys:
      - tenant: acme                  # the tenant the key acts as (sessions, prefix hashes)
        key_sha256: 3f9c…e1           # 64 hex digits
        admin: false                  # optional: may use /debug, /v1/sessions, /workers
        requests_per_min: 600         # optional; absent = the default, 0 = unlimited
        tokens_per_min: 200000        # optional; likewise

Environment (`DUALPATH_API_KEYS`): `tenant:key[:admin]` entries separated by commas, e.g.
`acme:sk-acme-0123456789abcdef,ops:sk-ops-0123456789abcdef:admin`; these keys get the default
limits. Several keys may name one tenant (rotation): they share its sessions and cache.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from gateway.errors import ConfigError

__all__ = ["ApiKey", "KeyRing", "check_tenant", "hash_key", "keys_from_env", "keys_from_file"]

MIN_KEY_CHARS = 16
"""Shortest plaintext key accepted: a guessable key defeats hashing it."""
_TENANT = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]{0,127}")
_DIGEST = re.compile(r"[0-9a-f]{64}")
_ENTRY_FIELDS = {"tenant", "key_sha256", "admin", "requests_per_min", "tokens_per_min"}


def hash_key(key: str) -> str:
    """The SHA-256 hex digest under which `key` is stored and looked up."""
    return hashlib.sha256(key.encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class ApiKey:
    """One configured key, by digest; its limits override the defaults when set."""

    tenant: str
    key_sha256: str
    admin: bool = False
    requests_per_min: int | None = None
    """None: the default (`RateLimitConfig.requests_per_min`); 0: unlimited."""
    tokens_per_min: int | None = None

    @property
    def key_id(self) -> str:
        """Names the key in rate-limit state: a digest prefix, useless for authenticating."""
        return self.key_sha256[:16]


class KeyRing:
    """The configured keys; empty means the gateway is open (no key required)."""

    def __init__(self, keys: Iterable[ApiKey] = ()) -> None:
        self._by_digest: dict[str, ApiKey] = {}
        for key in keys:
            if key.key_sha256 in self._by_digest:
                raise ConfigError(f"API key {key.key_id}… is configured twice")
            self._by_digest[key.key_sha256] = key

    def __bool__(self) -> bool:
        return bool(self._by_digest)

    def __len__(self) -> int:
        return len(self._by_digest)

    def find(self, presented: str) -> ApiKey | None:
        """The entry for a presented plaintext key, or None.

        The dict look-up can only leak timing about the digest of what the caller sent, which the
        caller controls only through SHA-256; the final comparison is constant-time anyway.
        """
        digest = hash_key(presented)
        entry = self._by_digest.get(digest)
        if entry is None or not hmac.compare_digest(entry.key_sha256, digest):
            return None
        return entry


def check_tenant(raw: Any, where: str) -> str:
    if not isinstance(raw, str) or not _TENANT.fullmatch(raw):
        raise ConfigError(
            f"{where}: tenant must be 1-128 characters of letters, digits and ._@- "
            f"(starting with a letter or digit), not {raw!r}"
        )
    return raw


def _limit(raw: Any, where: str) -> int | None:
    if raw is None:
        return None
    if isinstance(raw, bool) or not isinstance(raw, int) or raw < 0:
        raise ConfigError(f"{where} must be a non-negative integer, not {raw!r}")
    return raw


def _file_entry(item: Any, where: str) -> ApiKey:
    if not isinstance(item, Mapping):
        raise ConfigError(f"{where}: expected a mapping")
    unknown = set(item) - _ENTRY_FIELDS
    if unknown:
        # A plaintext `key:` field in particular must not be silently ignored.
        raise ConfigError(f"{where}: unknown fields {sorted(map(str, unknown))}")
    digest = item.get("key_sha256")
    if not isinstance(digest, str) or not _DIGEST.fullmatch(digest.lower()):
        raise ConfigError(f"{where}: key_sha256 must be 64 hex digits (`dualpath keys hash`)")
    admin = item.get("admin", False)
    if not isinstance(admin, bool):
        raise ConfigError(f"{where}: admin must be true or false")
    return ApiKey(
        tenant=check_tenant(item.get("tenant"), where),
        key_sha256=digest.lower(),
        admin=admin,
        requests_per_min=_limit(item.get("requests_per_min"), f"{where}.requests_per_min"),
        tokens_per_min=_limit(item.get("tokens_per_min"), f"{where}.tokens_per_min"),
    )


def keys_from_file(path: str | Path) -> tuple[ApiKey, ...]:
    """The entries of a keys file (format in the module docstring)."""
    try:
        data = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"cannot read API keys file {path}: {exc}") from exc
    raw = data.get("keys") if isinstance(data, Mapping) else None
    if not isinstance(raw, list):
        raise ConfigError(f"{path}: expected a mapping with a 'keys' list")
    return tuple(_file_entry(item, f"{path}: keys[{i}]") for i, item in enumerate(raw))


def keys_from_env(value: str) -> tuple[ApiKey, ...]:
    """`tenant:key[:admin],…` (from `DUALPATH_API_KEYS`), each key hashed at once.

    Errors name the entry by position only: the message must not carry a key.
    """
    out: list[ApiKey] = []
    for i, entry in enumerate(e.strip() for e in value.split(",")):
        if not entry:
            continue
        where = f"DUALPATH_API_KEYS entry {i + 1}"
        parts = entry.split(":")
        if len(parts) not in (2, 3) or (len(parts) == 3 and parts[2] != "admin"):
            raise ConfigError(f"{where}: expected tenant:key or tenant:key:admin")
        tenant, key = parts[0].strip(), parts[1].strip()
        if len(key) < MIN_KEY_CHARS:
            raise ConfigError(f"{where}: keys must be at least {MIN_KEY_CHARS} characters")
        out.append(ApiKey(check_tenant(tenant, where), hash_key(key), admin=len(parts) == 3))
    return tuple(out)
