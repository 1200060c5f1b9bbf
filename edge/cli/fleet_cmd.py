"""`affect-sensor fleet …`: the operator's commands for signed bundle rollouts (docs/fleet.md)."""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

from edge.cli.mqtt_args import add_mqtt_args, mqtt_config


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("fleet", help="operator commands: signing keys, signed bundles, rollouts, status")
    fleet = p.add_subparsers(dest="fleet_command", metavar="ACTION", required=True)

    k = fleet.add_parser("keygen", help="create an Ed25519 signing key (<name>.key) and its <key-id>.pub")
    k.add_argument("--out", type=Path, required=True, help="directory for the key files")
    k.add_argument("--name", default="fleet", help="private key file name (default: fleet)")
    k.set_defaults(func=_keygen)

    s = fleet.add_parser("sign", help="verify a bundle directory, sign its manifest and pack the transport .tar")
    s.add_argument("bundle", type=Path, help="bundle directory")
    s.add_argument("--key", type=Path, required=True, help="private signing key (PEM)")
    s.add_argument("--out", type=Path, required=True, help=".tar to write (atomically)")
    s.add_argument("--expires-days", type=float, help="set the manifest's expiry this many days from now")
    s.set_defaults(func=_sign)

    for name, helptext in (("publish", "publish a signed desired-state document (retained) for a device or group"),
                           ("rollout", "staged rollout: canary devices first, the group once they are healthy")):
        c = fleet.add_parser(name, help=helptext)
        c.add_argument("tar", type=Path, help="signed bundle .tar (from `fleet sign`)")
        c.add_argument("--url", required=True, help="where devices download it (https://, http://, file://)")
        c.add_argument("--key", type=Path, required=True, help="private signing key (PEM)")
        c.add_argument("--allow-downgrade", action="store_true",
                       help="permit devices to go to a lower build (the document then always expires: "
                            "--expires-hours, default 24)")
        c.add_argument("--expires-hours", type=float, help="devices ignore the document after this many hours")
        c.add_argument("--timeout", type=float, default=900.0, help="seconds to wait for devices (default 900)")
        add_mqtt_args(c)
        if name == "publish":
            where = c.add_mutually_exclusive_group(required=True)
            where.add_argument("--device", help="target one device id")
            where.add_argument("--group", help="target every device of a group")
            c.add_argument("--wait", action="store_true", help="wait until the target device reports the build")
            c.set_defaults(func=_publish)
        else:
            c.add_argument("--group", required=True, help="group to roll out to")
            c.add_argument("--canary", action="append", default=[], required=True, metavar="DEVICE",
                           help="canary device (repeatable); updated and checked before the group")
            c.set_defaults(func=_rollout)

    b = fleet.add_parser("broker-config", help="a device's bridge topic lines and central ACL block "
                                               "(firmware_cfg/mosquitto/)")
    b.add_argument("--device", required=True, help="device id ([device] id; the CN of its certificate)")
    b.add_argument("--group", required=True, help="the device's fleet group ([device] group)")
    b.add_argument("--prefix", default="affect", help="[mqtt] prefix of the device (default: affect)")
    b.add_argument("--discovery-prefix", default="homeassistant",
                   help="[mqtt] discovery_prefix of the device; 'none' when discovery is off")
    b.set_defaults(func=_broker_config)

    st = fleet.add_parser("status", help="update state of every device (retained messages)")
    add_mqtt_args(st)
    st.add_argument("--wait", type=float, default=2.0, help="seconds to collect retained states (default 2)")
    st.add_argument("--json", action="store_true")
    st.set_defaults(func=_status)


def _key(path: Path):
    from edge.cli.app import CLIError
    from edge.fleet.signing import load_signing_key

    try:
        return load_signing_key(path)
    except ValueError as exc:
        raise CLIError(str(exc)) from None


def _keygen(args: argparse.Namespace) -> int:
    from edge.cli.app import CLIError
    from edge.fleet.signing import generate_key

    try:
        key, pub, kid = generate_key(args.out, args.name)
    except FileExistsError as exc:
        raise CLIError(str(exc)) from None
    print(f"key id {kid}\nprivate key {key} (keep it off devices)\npublic key  {pub} "
          "(copy into each device's update.trusted_keys_dir)")
    return 0


def _sign(args: argparse.Namespace) -> int:
    from edge.fleet.operator import sign_bundle

    key = _key(args.key)
    expires = (datetime.now(timezone.utc) + timedelta(days=args.expires_days)) if args.expires_days else None
    sha, size = sign_bundle(args.bundle, key, args.out, expires)
    print(f"signed with key {key.key_id}: {args.out} ({size:,d} bytes, sha256 {sha})")
    return 0


def _broker_config(args: argparse.Namespace) -> int:
    from edge.cli.app import CLIError
    from edge.fleet.broker_config import DeviceTopics, acl_block, bridge_topic_lines

    discovery = None if args.discovery_prefix.lower() == "none" else args.discovery_prefix
    try:
        device = DeviceTopics(args.prefix, args.device, args.group, discovery)
        bridge, acl = bridge_topic_lines(device), acl_block(device)
    except ValueError as exc:
        raise CLIError(str(exc)) from None
    print(f"# bridge-central.conf on {args.device} (with remote_clientid {args.device}, "
          f"notification_topic {device.bridge_state()}):\n{bridge}")
    print(f"# central-acl.conf on the central broker:\n{acl}", end="")
    return 0


class _Broker:
    """A connected operator client that collects retained update states."""

    def __init__(self, args: argparse.Namespace, command: str) -> None:
        from edge.cli.app import CLIError
        from edge.fleet.operator import FleetView
        from edge.publish.client import PublisherError, build_client, connect_async

        self.config = mqtt_config(args, command)
        self.view = FleetView(self.config.prefix)
        try:
            self.client = build_client(self.config, f"affect-fleet-{os.getpid()}")
        except PublisherError as exc:
            raise CLIError(str(exc)) from None
        ready, problem = threading.Event(), []

        def on_connect(c, userdata, flags, reason, properties) -> None:
            if reason.is_failure:
                problem.append(f"broker refused the connection: {reason}")
            else:
                c.subscribe([(t, 1) for t in self.view.subscriptions()])
            ready.set()

        self.client.on_connect = on_connect
        self.client.on_message = lambda c, u, msg: self.view.feed(msg.topic, bytes(msg.payload))
        connect_async(self.client, self.config)
        self.client.loop_start()
        if not ready.wait(10) or problem:
            self.close()
            raise CLIError(problem[0] if problem else f"no answer from broker {self.config.host}:{self.config.port}")

    def publish(self, topic: str, doc: dict) -> None:
        from edge.cli.app import CLIError

        info = self.client.publish(topic, json.dumps(doc).encode(), qos=1, retain=True)
        info.wait_for_publish(10)
        if not info.is_published():
            raise CLIError(f"publishing to {topic} was not acknowledged within 10 s")

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def _document(args: argparse.Namespace, target: str, *, check_archive: bool = True) -> dict:
    """The signed document for `target`; the archive is unpacked and verified first unless already done."""
    from edge.cli.app import CLIError
    from edge.fleet.operator import desired_document

    if args.expires_hours is not None and args.expires_hours <= 0:
        raise CLIError(f"--expires-hours must be positive, got {args.expires_hours}")
    expires = args.expires_hours * 3600 if args.expires_hours else None
    key = _key(args.key)
    try:
        return desired_document(args.tar, args.url, target, key, allow_downgrade=args.allow_downgrade,
                                expires_in_s=expires, check_archive=check_archive)
    except ValueError as exc:
        raise CLIError(str(exc)) from None


def _wait_for(broker: _Broker, devices: list[str], build: int, timeout: float) -> dict[str, str]:
    from edge.fleet.operator import reached

    outcome: dict[str, str] = {}

    def done(view) -> bool:
        for d in devices:
            r = reached(view.states.get(d), build)
            if r is not None:
                outcome[d] = r
        return all(d in outcome for d in devices)

    broker.view.wait(done, timeout)
    return outcome


def _publish(args: argparse.Namespace) -> int:
    from edge.fleet.operator import target_topic

    target = f"device:{args.device}" if args.device else f"group:{args.group}"
    doc = _document(args, target)
    broker = _Broker(args, "fleet publish")
    try:
        topic = target_topic(broker.config.prefix, target)
        broker.publish(topic, doc)
        print(f"published {doc['bundle']['name']} {doc['bundle']['version']} build {doc['bundle']['build']} "
              f"to {topic} (signed by {doc['key_id']})")
        if args.wait and args.device:
            outcome = _wait_for(broker, [args.device], doc["bundle"]["build"], args.timeout)
            print(broker.view.table([args.device]))
            return 0 if outcome.get(args.device) == "active" else 1
    finally:
        broker.close()
    return 0


def _rollout(args: argparse.Namespace) -> int:
    from edge.fleet.operator import reached, target_topic

    build = _document(args, f"group:{args.group}")["bundle"]["build"]  # verifies the archive before connecting
    broker = _Broker(args, "fleet rollout")
    try:
        started = time.monotonic()
        for device in args.canary:
            doc = _document(args, f"device:{device}", check_archive=False)
            broker.publish(target_topic(broker.config.prefix, f"device:{device}"), doc)
        print(f"stage 1: canaries {', '.join(args.canary)} -> build {build}", flush=True)
        outcome = _wait_for(broker, args.canary, build, args.timeout)
        print(broker.view.table(args.canary))
        bad = [d for d in args.canary if outcome.get(d) != "active"]
        if bad:
            print(f"rollout stopped: canaries not healthy: {', '.join(bad)}; the group was not updated",
                  file=sys.stderr)
            return 1
        doc = _document(args, f"group:{args.group}", check_archive=False)
        broker.publish(target_topic(broker.config.prefix, f"group:{args.group}"), doc)
        print(f"stage 2: group {args.group} -> build {build}", flush=True)
        remaining = args.timeout - (time.monotonic() - started)
        broker.view.wait(lambda v: all(reached(v.states.get(d), build) for d in _members(v, args.group)),
                         max(remaining, 1.0))
        members = _members(broker.view, args.group)
        print(broker.view.table(members))
        failed = [d for d in members if reached(broker.view.states.get(d), build) != "active"]
        if failed:
            print(f"not active on build {build}: {', '.join(failed)}", file=sys.stderr)
            return 1
        print(f"rollout complete: {len(members)} devices on build {build}")
        return 0
    finally:
        broker.close()


def _members(view, group: str) -> list[str]:
    return sorted(d for d, g in view.groups.items() if g == group)


def _status(args: argparse.Namespace) -> int:
    broker = _Broker(args, "fleet status")
    try:
        time.sleep(args.wait)
        if args.json:
            print(json.dumps(broker.view.states, indent=2, sort_keys=True))
        else:
            print(broker.view.table())
    finally:
        broker.close()
    return 0
