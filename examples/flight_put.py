#!/usr/bin/env python3
"""Push a synthetic continuous stream into neurod over Arrow Flight (DoPut).

Usage:
    pip install pyarrow numpy
    python examples/flight_put.py [--address grpc://127.0.0.1:9751] [--source rig]
        [--stream-id rig1] [--channels 4] [--seconds 2] [--rate 1000] [--batch-ms 100] [--no-pace]

The descriptor path names a running `arrow_ipc` source of neurod's config, e.g.

    [sources.rig]
    type = "arrow_ipc"

and the stream gets the same checks, name (`<source>.<stream-id>`, here `rig.rig1`), counters
and consumers as one pushed over TCP (see examples/push_ipc.py for the schema rules). A rejected
stream ends the DoPut with an error naming the problem; the script prints it and exits 1.
"""

import argparse
import sys
import time

import numpy as np
import pyarrow as pa
import pyarrow.flight as flight


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--address", default="grpc://127.0.0.1:9751")
    p.add_argument("--source", default="rig")
    p.add_argument("--stream-id", default="rig1")
    p.add_argument("--channels", type=int, default=4)
    p.add_argument("--seconds", type=float, default=2.0)
    p.add_argument("--rate", type=int, default=1000)
    p.add_argument("--batch-ms", type=float, default=100.0)
    p.add_argument("--no-pace", action="store_true")
    a = p.parse_args()
    fields = [pa.field("sample_index", pa.int64(), nullable=False)]
    fields += [pa.field(f"ch{c}", pa.int16(), nullable=False) for c in range(a.channels)]
    schema = pa.schema(fields, metadata={
        "neurod.layout": "continuous",
        "neurod.stream_id": a.stream_id,
        "neurod.stream_kind": "ap",
        "neurod.sampling_hz": str(a.rate),
    })
    per_batch = max(1, int(a.rate * a.batch_ms / 1000))
    total = int(a.rate * a.seconds)
    client = flight.connect(a.address)
    descriptor = flight.FlightDescriptor.for_path(a.source)
    rng = np.random.default_rng(0)
    sent = 0
    try:
        writer, _ = client.do_put(descriptor, schema)
        started = time.monotonic()
        while sent < total:
            n = min(per_batch, total - sent)
            cols = [pa.array(np.arange(sent, sent + n, dtype=np.int64))]
            cols += [pa.array(rng.integers(-100, 100, n, dtype=np.int16)) for _ in range(a.channels)]
            writer.write_batch(pa.record_batch(cols, schema=schema))
            sent += n
            if not a.no_pace:
                time.sleep(max(0.0, started + sent / a.rate - time.monotonic()))
        writer.close()
    except flight.FlightError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"pushed {sent} samples of {a.channels} channels to {a.source}.{a.stream_id}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
