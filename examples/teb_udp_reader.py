#!/usr/bin/env python3
"""Reads the per-bin records neurod's `teb_decode` sends to `emit_to` (standard library only).

Each datagram is one record, little endian (README, "TEB decoding"):

    offset  type        field
    0       4 bytes     magic b"NTEB"
    4       u16         version (1)
    6       u16         flags: bit 0 state reset before this step, bit 1 first step of a reloaded model
    8       u32         n_targets
    12      u32         model_generation (0 = the model loaded at start, +1 per reload)
    16      u64         sequence (+1 per record; a jump means records were lost)
    24      i64         bin_index (of the predicted bin)
    32      f64         time_s (start of the predicted bin)
    40      f32         rate_nats
    44      f32         rate_bits_per_s
    48      f32 * n     predictions, in model.json's target column order

Usage:
    python3 teb_udp_reader.py --listen udp://127.0.0.1:9760            # as the config's emit_to
    python3 teb_udp_reader.py --listen unix:///run/neurod/decode.sock --json --count 100

In a controller, `parse(sock.recv(65536))` is all there is to it.
"""

import argparse
import json
import os
import socket
import struct
import sys

MAGIC = b"NTEB"
VERSION = 1
FLAG_RESET = 1
FLAG_NEW_MODEL = 2
HEADER = struct.Struct("<4sHHIIQqdff")  # 48 bytes


def parse(datagram):
    """One record as a dict; ValueError if it is not one."""
    if len(datagram) < HEADER.size:
        raise ValueError(f"{len(datagram)} bytes, shorter than the {HEADER.size}-byte header")
    (magic, version, flags, n_targets, generation, sequence, bin_index, time_s, rate_nats,
     rate_bits_per_s) = HEADER.unpack_from(datagram)
    if magic != MAGIC:
        raise ValueError(f"magic {magic!r}, not {MAGIC!r}")
    if version != VERSION:
        raise ValueError(f"version {version}, this reader knows {VERSION}")
    if len(datagram) != HEADER.size + 4 * n_targets:
        raise ValueError(f"{len(datagram)} bytes for {n_targets} targets")
    predictions = list(struct.unpack_from(f"<{n_targets}f", datagram, HEADER.size))
    return {
        "flags": flags,
        "reset": bool(flags & FLAG_RESET),
        "new_model": bool(flags & FLAG_NEW_MODEL),
        "model_generation": generation,
        "sequence": sequence,
        "bin_index": bin_index,
        "time_s": time_s,
        "rate_nats": rate_nats,
        "rate_bits_per_s": rate_bits_per_s,
        "predictions": predictions,
    }


def open_socket(listen):
    """A bound datagram socket for `udp://HOST:PORT` or `unix:///PATH`, and its address."""
    if listen.startswith("udp://"):
        host, _, port = listen[len("udp://"):].rpartition(":")
        host = host.strip("[]")
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_DGRAM)
        sock.bind((host, int(port)))
        name = sock.getsockname()
        return sock, f"udp://{name[0]}:{name[1]}"
    if listen.startswith("unix://"):
        path = listen[len("unix://"):]
        if os.path.exists(path):
            os.unlink(path)  # a socket left by an earlier reader
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.bind(path)
        return sock, f"unix://{path}"
    raise SystemExit(f"--listen {listen!r}: expected udp://HOST:PORT or unix:///PATH")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--listen", default="udp://127.0.0.1:9760")
    ap.add_argument("--count", type=int, default=0, help="stop after this many records (0: never)")
    ap.add_argument("--timeout", type=float, default=0, help="stop after this many seconds without a record (0: never)")
    ap.add_argument("--json", action="store_true", help="one JSON object per line")
    args = ap.parse_args()
    sock, address = open_socket(args.listen)
    if args.timeout > 0:
        sock.settimeout(args.timeout)
    print(f"listening on {address}", flush=True)
    seen = 0
    last_sequence = None
    while args.count <= 0 or seen < args.count:
        try:
            datagram = sock.recv(65536)
        except socket.timeout:
            print(f"no record for {args.timeout} s", file=sys.stderr)
            return 1
        try:
            r = parse(datagram)
        except ValueError as e:
            print(f"not a record: {e}", file=sys.stderr)
            continue
        if last_sequence is not None and r["sequence"] != last_sequence + 1:
            print(f"{r['sequence'] - last_sequence - 1} record(s) lost", file=sys.stderr)
        last_sequence = r["sequence"]
        seen += 1
        if args.json:
            print(json.dumps(r), flush=True)
        else:
            preds = " ".join(f"{p:.4g}" for p in r["predictions"])
            print(f"bin {r['bin_index']} t={r['time_s']:.3f}s rate={r['rate_bits_per_s']:.3g} bit/s "
                  f"pred=[{preds}]{' reset' if r['reset'] else ''}{' new-model' if r['new_model'] else ''}",
                  flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
