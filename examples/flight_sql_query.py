#!/usr/bin/env python3
"""Query neurod with SQL over Arrow Flight SQL, through ADBC.

Usage:
    pip install pyarrow adbc-driver-flightsql
    python examples/flight_sql_query.py [--uri grpc://127.0.0.1:9751] \
        'SELECT channel, count(*) AS n FROM "rig.imec0.ap.spikes" GROUP BY channel ORDER BY n DESC LIMIT 10'
        [--out result.arrow]

Every stream is a table named by its id (stored rows and the ones still in memory alike), plus
`streams`, `components` and `neurons`. `SELECT table_name FROM information_schema.tables` lists them.
"""

import argparse
import sys

import adbc_driver_flightsql.dbapi as flightsql
import pyarrow as pa


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("query")
    p.add_argument("--uri", default="grpc://127.0.0.1:9751")
    p.add_argument("--out", help="write the result to this Arrow IPC file")
    a = p.parse_args()
    with flightsql.connect(a.uri) as conn, conn.cursor() as cur:
        cur.execute(a.query)
        table = cur.fetch_arrow_table()
    print(table)
    if a.out:
        with pa.ipc.new_file(a.out, table.schema) as w:
            w.write_table(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
