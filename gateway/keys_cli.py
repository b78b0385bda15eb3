"""`dualpath keys`: make API keys, and the SHA-256 digests a keys file holds instead of them."""

from __future__ import annotations

import secrets
import sys
from typing import Annotated

import typer
import yaml

from gateway.api_keys import MIN_KEY_CHARS, check_tenant, hash_key
from gateway.errors import ConfigError

keys_app = typer.Typer(
    help="API keys: hash one for the keys file (DUALPATH_API_KEYS_FILE), or make a new one.",
    no_args_is_help=True,
)

KEY_PREFIX = "sk-dp-"


@keys_app.command("hash")
def hash_command(
    key: Annotated[
        str | None,
        typer.Argument(help="The key. Omit it to read one line from stdin (out of shell history)."),
    ] = None,
) -> None:
    """Print the key_sha256 of a key, for its entry in the keys file."""
    if key is None:
        key = sys.stdin.readline().strip()
    if len(key) < MIN_KEY_CHARS:
        typer.echo(f"keys must be at least {MIN_KEY_CHARS} characters", err=True)
        raise typer.Exit(2)
    typer.echo(hash_key(key))


@keys_app.command("new")
def new_command(
    tenant: Annotated[str, typer.Argument(help="The tenant the key acts as.")],
    admin: Annotated[bool, typer.Option(help="May use the admin routes.")] = False,
    requests_per_min: Annotated[int | None, typer.Option(min=0, help="0 = unlimited.")] = None,
    tokens_per_min: Annotated[int | None, typer.Option(min=0, help="0 = unlimited.")] = None,
) -> None:
    """Make a random key: print it once, and the keys-file entry that holds only its digest."""
    try:
        check_tenant(tenant, "tenant")
    except ConfigError as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(2) from None
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    entry: dict[str, object] = {"tenant": tenant, "key_sha256": hash_key(key), "admin": admin}
    if requests_per_min is not None:
        entry["requests_per_min"] = requests_per_min
    if tokens_per_min is not None:
        entry["tokens_per_min"] = tokens_per_min
    typer.echo(f"# the key, shown only now: {key}")
    typer.echo("# its entry under `keys:` in the keys file:")
    typer.echo(yaml.safe_dump([entry], sort_keys=False).rstrip())
