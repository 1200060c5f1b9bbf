"""Broker options shared by the commands that talk to MQTT from a workstation (`listen`, `fleet`).

Credentials come from a config file's [mqtt] section, from --password-file /
--password-env (the same SecretRef mechanism; a password is never an argument),
or from a client certificate (--cert-file/--key-file), which is how the fleet's
central broker identifies every client (firmware_cfg/mosquitto/central.conf).
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
    p.add_argument("--cert-file", type=Path, help="client certificate (PEM) for mutual TLS (implies --tls)")
    p.add_argument("--key-file", type=Path, help="private key of --cert-file (PEM)")


def mqtt_config(args: argparse.Namespace, command: str):
    """The MQTTConfig these options describe; a bad combination is a CLIError naming the command."""
    from pydantic import ValidationError

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
    if (args.cert_file is None) != (args.key_file is None):
        raise CLIError(f"{command} options: --cert-file and --key-file go together (mutual TLS needs both)")
    if args.tls or args.ca_file or args.cert_file:
        tls = {**data["tls"], "enabled": True}
        tls.update({k: getattr(args, k) for k in ("ca_file", "cert_file", "key_file") if getattr(args, k)})
        data["tls"] = tls
    try:
        return MQTTConfig.model_validate(data)
    except ValidationError as exc:  # the message names the option, never echoes a value
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"])
        raise CLIError(f"{command} options: mqtt.{where}: {first['msg']}" if where
                       else f"{command} options: {first['msg']}") from None
