"""Broker options shared by the commands that talk to MQTT from a workstation (`listen`, `fleet`).

Credentials come from a config file's [mqtt] section or from --password-file /
--password-env (the same SecretRef mechanism); a password is never an argument.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def add_mqtt_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", type=Path, help="device TOML whose [mqtt] section to use (host, TLS, credentials)")
    p.add_argument("--host", help="broker host (overrides the config)")
    p.add_argument("--port", type=int, help="broker port (overrides the config)")
    p.add_argument("--prefix", help="topic prefix (default: the config's, else 'affect')")
    p.add_argument("--protocol", choices=["3.1.1", "5"], help="MQTT protocol version")
    p.add_argument("--username", help="broker user")
    secret = p.add_mutually_exclusive_group()
    secret.add_argument("--password-file", type=Path, metavar="PATH", help="read the password from this file")
    secret.add_argument("--password-env", metavar="VAR", help="read the password from this environment variable")
    p.add_argument("--tls", action="store_true", help="connect with TLS")
    p.add_argument("--ca-file", type=Path, help="CA bundle for the broker certificate (implies --tls)")


def mqtt_config(args: argparse.Namespace, command: str):
    """The MQTTConfig these options describe; a bad combination is a CLIError naming the command."""
    from edge.cli.app import CLIError
    from edge.config import load_config
    from edge.config.models import MQTTConfig

    base = load_config(args.config).mqtt if args.config else MQTTConfig()
    data = base.model_dump()
    for key in ("host", "port", "prefix", "protocol", "username"):
        if getattr(args, key) is not None:
            data[key] = getattr(args, key)
    if args.password_file or args.password_env:
        data["password"] = {"file": args.password_file} if args.password_file else {"env": args.password_env}
    if args.tls or args.ca_file:
        data["tls"] = {**data["tls"], "enabled": True, **({"ca_file": args.ca_file} if args.ca_file else {})}
    try:
        return MQTTConfig.model_validate(data)
    except ValueError as exc:
        raise CLIError(f"{command} options: {exc}") from None
