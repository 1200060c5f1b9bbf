"""A real RTSP camera for tests: GStreamer's RTSP server (gst-rtsp-server) looping a clip of JPEG frames.

Run with Debian's /usr/bin/python3, which has `gi` (python3-gi, gir1.2-gst-rtsp-server-1.0); the project's
virtual environment is another Python. tests/rtsp_camera.py starts and controls it:

    /usr/bin/python3 tests/rtsp_server_gst.py --port P --frames DIR [--fps 15] [--path /cam] [--user U]

It listens on 127.0.0.1 only and prints "ready PORT" once it accepts connections. With --user the
server demands RTSP Digest authentication; the password comes from the environment variable
RTSP_TEST_PASSWORD (never the command line). Each client gets its own pipeline: appsrc (live,
timestamped at --fps, the frames in name order, looping) -> jpegparse -> rtpjpegpay, i.e. an MJPEG
camera over RTP (RFC 2435).
"""

from __future__ import annotations

import argparse
import os
import sys

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstRtsp", "1.0")
gi.require_version("GstRtspServer", "1.0")
from gi.repository import GLib, Gst, GstRtsp, GstRtspServer  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--frames", required=True, help="folder of JPEG files, played in name order")
    parser.add_argument("--fps", type=int, default=15)
    parser.add_argument("--path", default="/cam")
    parser.add_argument("--user")
    args = parser.parse_args()

    names = sorted(n for n in os.listdir(args.frames) if n.lower().endswith((".jpg", ".jpeg")))
    if not names:
        sys.exit(f"no JPEG frames in {args.frames}")
    jpegs = []
    for name in names:
        with open(os.path.join(args.frames, name), "rb") as f:
            jpegs.append(f.read())

    Gst.init(None)
    server = GstRtspServer.RTSPServer()
    server.set_address("127.0.0.1")
    server.set_service(str(args.port))

    factory = GstRtspServer.RTSPMediaFactory()
    factory.set_launch("( appsrc name=src is-live=true format=time ! jpegparse ! rtpjpegpay name=pay0 pt=26 )")
    factory.set_shared(False)
    frame_ns = Gst.SECOND // args.fps

    def configure(_factory, media) -> None:
        src = media.get_element().get_by_name("src")
        src.set_property("caps", Gst.Caps.from_string(f"image/jpeg,framerate={args.fps}/1"))
        count = [0]

        def need_data(appsrc, _length) -> None:
            buffer = Gst.Buffer.new_wrapped(jpegs[count[0] % len(jpegs)])
            buffer.pts, buffer.duration = count[0] * frame_ns, frame_ns
            count[0] += 1
            appsrc.emit("push-buffer", buffer)

        src.connect("need-data", need_data)

    factory.connect("media-configure", configure)

    if args.user:
        password = os.environ.get("RTSP_TEST_PASSWORD")
        if password is None:
            sys.exit("--user needs the password in RTSP_TEST_PASSWORD")
        auth = GstRtspServer.RTSPAuth()
        auth.set_supported_methods(GstRtsp.RTSPAuthMethod.DIGEST)
        token = GstRtspServer.RTSPToken()
        token.set_string(GstRtspServer.RTSP_TOKEN_MEDIA_FACTORY_ROLE, "viewer")
        auth.add_digest(args.user, password, token)
        server.set_auth(auth)
        permissions = GstRtspServer.RTSPPermissions()
        permissions.add_role_from_structure(Gst.Structure.new_from_string(
            "viewer, media.factory.access=(boolean)true, media.factory.construct=(boolean)true"))
        factory.set_permissions(permissions)

    server.get_mount_points().add_factory(args.path, factory)
    if server.attach(None) == 0:
        sys.exit(f"cannot listen on 127.0.0.1:{args.port}")
    print(f"ready {server.get_bound_port()}", flush=True)
    GLib.MainLoop().run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
