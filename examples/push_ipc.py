#!/usr/bin/env python3
"""Push a synthetic 384-channel Neuropixels-like stream to neurod's `arrow_ipc` source.

Usage:
    pip install pyarrow numpy
    python examples/push_ipc.py [--address 127.0.0.1:9760] [--stream-id rig1]
                                [--seconds 10] [--rate 30000] [--batch-ms 10] [--no-pace]

with neurod configured as

    [sources.rig]
    type = "arrow_ipc"
    address = "127.0.0.1:9760"

The stream arrives as `rig.<stream-id>` (here `rig.rig1`).

What neurod expects (and this script sends): one Arrow IPC *stream* per TCP connection, whose
schema is `sample_index: int64` (strictly increasing) then one `int16` column per channel, raw ADC
values, with schema metadata `neurod.layout = continuous` and `neurod.sampling_hz` (exact decimal
text), and optionally `neurod.stream_id`, `neurod.stream_kind`, `neurod.probe`, plus per-channel
field metadata (`neurod.channel_kind`, `neurod.uv_per_bit`, `neurod.x_um`, `neurod.y_um`,
`neurod.shank`). The data here is Gaussian noise (about 10 µV) with spikes of a few units.

If neurod rejects the stream it writes one line `error: <why>` back and closes the connection;
the script prints that line and exits with status 1.
"""

import argparse
import socket
import sys
import time

import numpy as np
import pyarrow as pa

CHANNELS = 384
UV_PER_BIT = 2.34375  # Neuropixels 1.0, AP gain 500: 0.6 V / 512 / 500


def schema_for(stream_id: str, rate_text: str) -> pa.Schema:
    fields = [pa.field("sample_index", pa.int64(), nullable=False)]
    for ch in range(CHANNELS):
        # Neuropixels 1.0 checkerboard: four columns, two contacts per 20 µm row.
        meta = {
            "neurod.channel_kind": "ap",
            "neurod.uv_per_bit": str(UV_PER_BIT),
            "neurod.x_um": str([43.0, 11.0, 59.0, 27.0][ch % 4]),
            "neurod.y_um": str(20.0 * (ch // 2)),
            "neurod.shank": "0",
        }
        fields.append(pa.field(f"AP{ch}", pa.int16(), nullable=False, metadata=meta))
    return pa.schema(
        fields,
        metadata={
            "neurod.layout": "continuous",
            "neurod.stream_id": stream_id,
            "neurod.stream_kind": "ap",
            "neurod.sampling_hz": rate_text,
            "neurod.first_sample": "0",
            "neurod.probe": "synthetic-NP1000",
        },
    )


class Synth:
    """Noise plus spikes of a few units, each seen on its channel and fading on neighbours."""

    def __init__(self, rate: float, seed: int = 0):
        self.rng = np.random.default_rng(seed)
        self.rate = rate
        self.unit_channels = self.rng.choice(np.arange(2, CHANNELS - 2), size=20, replace=False)
        self.unit_hz = self.rng.uniform(2.0, 15.0, size=20)
        t = np.arange(int(0.002 * rate))  # 2 ms waveform
        self.waveform = -np.exp(-(((t - len(t) / 3) / (0.0002 * rate)) ** 2))
        self.amplitude_bits = self.rng.uniform(40.0, 120.0, size=20)

    def block(self, n: int) -> np.ndarray:
        """(CHANNELS, n) int16: channel-major, so each column is contiguous for Arrow."""
        x = self.rng.normal(0.0, 10.0 / UV_PER_BIT, size=(CHANNELS, n + len(self.waveform)))
        for unit, ch in enumerate(self.unit_channels):
            for s in np.flatnonzero(self.rng.random(n) < self.unit_hz[unit] / self.rate):
                for d, fade in ((-2, 0.2), (-1, 0.5), (0, 1.0), (1, 0.5), (2, 0.2)):
                    x[ch + d, s : s + len(self.waveform)] += (
                        fade * self.amplitude_bits[unit] * self.waveform
                    )
        # Spikes spilling past the block end are cut: fine for a demo stream.
        return np.clip(np.rint(x[:, :n]), -32768, 32767).astype(np.int16)


def reply_line(sock: socket.socket) -> str:
    """The line neurod wrote back, if any ('' when it closed without a word)."""
    sock.settimeout(2.0)
    data = b""
    try:
        while not data.endswith(b"\n"):
            chunk = sock.recv(4096)
            if not chunk:
                break
            data += chunk
    except OSError:
        pass
    return data.decode("utf-8", "replace").strip()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--address", default="127.0.0.1:9760", help="neurod arrow_ipc host:port")
    ap.add_argument("--stream-id", default="rig1", help="becomes <component id>.<stream id>")
    ap.add_argument("--seconds", type=float, default=10.0, help="how much signal to send")
    ap.add_argument("--rate", default="30000", help="sampling rate in Hz, exact decimal text")
    ap.add_argument("--batch-ms", type=float, default=10.0, help="samples per batch, in ms")
    ap.add_argument("--no-pace", action="store_true", help="send as fast as possible")
    ap.add_argument("--token-file", help="file holding the source's token (sent as `AUTH <token>`)")
    args = ap.parse_args()

    rate = float(args.rate)
    host, _, port = args.address.rpartition(":")
    schema = schema_for(args.stream_id, args.rate)
    synth = Synth(rate)
    total = int(round(args.seconds * rate))
    per_batch = max(1, int(round(args.batch_ms * rate / 1000.0)))

    sock = socket.create_connection((host.strip("[]"), int(port)))
    sink = sock.makefile("wb")
    if args.token_file:
        # A source with a token reads one line `AUTH <token>` before the stream.
        with open(args.token_file) as f:
            sink.write(f"AUTH {f.read().strip()}\n".encode())
    writer = pa.ipc.new_stream(sink, schema)
    started = time.monotonic()
    sent = 0
    try:
        while sent < total:
            n = min(per_batch, total - sent)
            data = synth.block(n)
            columns = [pa.array(np.arange(sent, sent + n, dtype=np.int64))]
            columns += [pa.array(data[ch]) for ch in range(CHANNELS)]
            writer.write_batch(pa.record_batch(columns, schema=schema))
            sink.flush()
            sent += n
            if not args.no_pace:
                time.sleep(max(0.0, started + sent / rate - time.monotonic()))
        writer.close()  # the end-of-stream marker
        sink.flush()
        sock.shutdown(socket.SHUT_WR)
    except (BrokenPipeError, ConnectionResetError):
        pass  # neurod closed the connection; its reason follows
    reply = reply_line(sock)
    sock.close()
    if reply.startswith("error:"):
        print(f"neurod rejected the stream after {sent} samples: {reply}", file=sys.stderr)
        return 1
    print(f"sent {sent} samples x {CHANNELS} channels as stream {args.stream_id!r}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
