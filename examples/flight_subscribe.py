#!/usr/bin/env python3
"""Subscribe to one of neurod's streams over Arrow Flight, live or from a past time.

Usage:
    pip install pyarrow
    python examples/flight_subscribe.py [--address grpc://127.0.0.1:9751]
        [--stream rig.imec0.ap.spikes] [--from-time 12.5] [--seconds 10] [--out rows.arrow]

With no --stream it lists the streams (ListFlights). The ticket is JSON,
{"stream": "<id>", "from_time_s": <seconds>}: without from_time_s the rows start with the next
batch; with it, stored rows come first, then the rows neurod holds in memory, then live ones,
with no row missing or repeated. The subscription ends when the stream ends, when its schema
changes, or after --seconds; a reader that falls behind is dropped with an error.
--out writes every row received to an Arrow IPC file.
"""

import argparse
import json
import sys
import time

import pyarrow as pa
import pyarrow.flight as flight


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--address", default="grpc://127.0.0.1:9751")
    p.add_argument("--stream")
    p.add_argument("--from-time", type=float, help="start at this time_s (seconds)")
    p.add_argument("--seconds", type=float, default=0, help="stop after this long (0: at the end)")
    p.add_argument("--out", help="write the rows received to this Arrow IPC file")
    a = p.parse_args()
    client = flight.connect(a.address)
    if not a.stream:
        for info in client.list_flights():
            print(f"{info.descriptor.path[0].decode()}: {info.total_records} rows, "
                  f"{len(info.schema)} columns")
        return 0
    ticket = {"stream": a.stream}
    if a.from_time is not None:
        ticket["from_time_s"] = a.from_time
    reader = client.do_get(flight.Ticket(json.dumps(ticket).encode()))
    started = time.monotonic()
    batches, rows = [], 0
    try:
        for chunk in reader:
            batches.append(chunk.data)
            rows += chunk.data.num_rows
            if a.seconds and time.monotonic() - started > a.seconds:
                break
    except flight.FlightError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    finally:
        reader.cancel()
    print(f"{a.stream}: {rows} rows in {len(batches)} batches")
    if a.out:
        schema = batches[0].schema if batches else reader.schema
        with pa.ipc.new_file(a.out, schema) as w:
            for b in batches:
                w.write_batch(b)
    return 0


if __name__ == "__main__":
    sys.exit(main())
