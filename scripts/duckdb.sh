#!/usr/bin/env bash
# Queries supplystream views with DuckDB, an engine independent of ours, to prove the Parquet
# files are plain Parquet that others read and that they give the same answers.
#
#   scripts/duckdb.sh VIEWS_DIR "SQL"     # prints CSV (header row, then rows)
#
# Every VIEWS_DIR/<view>/*.parquet becomes a DuckDB view named <view>. DuckDB comes from PyPI
# (pinned) into a virtualenv cached in ~/.cache/supplystream, made on first use.
set -euo pipefail

DUCKDB_VERSION=2.0.1
VIEWS=${1:?usage: duckdb.sh VIEWS_DIR SQL}
SQL=${2:?usage: duckdb.sh VIEWS_DIR SQL}
CACHE=${SUPPLYSTREAM_CACHE:-$HOME/.cache/supplystream}
VENV=$CACHE/duckdb-$DUCKDB_VERSION

# The marker is written last, so an interrupted install is redone rather than half-used.
if [[ ! -f $VENV/.installed ]]; then
    echo "duckdb.sh: installing duckdb==$DUCKDB_VERSION from PyPI into $VENV" >&2
    rm -rf "$VENV"
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install --quiet --disable-pip-version-check "duckdb==$DUCKDB_VERSION"
    touch "$VENV/.installed"
fi

exec "$VENV/bin/python" - "$VIEWS" "$SQL" <<'PY'
import csv, pathlib, sys
import duckdb

views, sql = pathlib.Path(sys.argv[1]), sys.argv[2]
con = duckdb.connect()
# Dates of timestamps in UTC, as DataFusion makes them (DuckDB uses the machine's zone).
con.execute("SET TimeZone = 'UTC'")
for d in sorted(p for p in views.iterdir() if p.is_dir() and any(p.glob("*.parquet"))):
    con.execute(f"CREATE VIEW \"{d.name}\" AS SELECT * FROM read_parquet('{d}/*.parquet')")
cur = con.execute(sql)
out = csv.writer(sys.stdout, lineterminator="\n")
out.writerow([c[0] for c in cur.description])
out.writerows(cur.fetchall())
PY
