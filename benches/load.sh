#!/usr/bin/env bash
# riegel load comparison, on loopback, bounded in time (< 10 min incl. build).
#
#   bash benches/load.sh                       # 3 interleaved rounds of 10 s
#   ROUNDS=2 DURATION=5 bash benches/load.sh   # a quicker, rougher pass
#
# What it measures (all on 127.0.0.1, authenticated GETs of a 1 KiB file):
#   A  nginx serving the file directly         (reference: the upstream alone)
#   B  riegel serve -> A                       (the product)
#   C  nginx proxy_pass -> A, upstream keepalive 64   (baseline 1)
#   D  nginx auth_request -> riegel /_riegel/auth, then proxy_pass -> A (baseline 2)
# with `wrk -t$THREADS -c$CONNS -d${DURATION}s --latency`, rounds interleaved
# (A B C D, A B C D, ...), medians over rounds; then
#   - riegel's RSS idle, holding 1,000 keep-alive connections (python3), and
#     under wrk -c1000 (measured before the storm: argon2 memory would hide it);
#   - a login storm: p99 through riegel alone vs while $STORM concurrent
#     logins (one wrk process with a Lua script) POST wrong passwords for
#     random usernames to /_riegel/login; $ROUNDS interleaved rounds of
#     alone and during, medians compared.
# The Markdown report is printed at the end and written to $WORK/results.md.
#
# nginx processes: the upstream (A) runs `worker_processes 1` (UPSTREAM_WORKERS):
# one worker serves ~100k req/s of a static file here, far above what any
# proxy in front of it reaches, and it leaves the second core to the proxy
# under test. The front nginx (C and D) runs `worker_processes auto`
# (NGINX_WORKERS), i.e. one worker per CPU, like riegel, whose worker threads
# default to the number of CPUs. Both nginx instances: access_log off,
# keepalive_requests 1000000 (riegel logs no per-request line at its default
# level `info` and has no per-connection request limit either).
#
# Environment knobs: ROUNDS (3) DURATION (10, seconds per wrk run) THREADS (2)
# CONNS (50) STORM (50 login workers) HOLD_CONNS (1000) UPSTREAM_WORKERS (1)
# NGINX_WORKERS (auto) KEEP_WORK (0: on exit, delete the work dir except the
# report and the logs; 1: keep everything) SKIP_BUILD (0: build when a source
# is newer than the binary) RIEGEL_PRELOAD (empty; e.g.
# /usr/lib/x86_64-linux-gnu/libjemalloc.so.2 to try another allocator
# without rebuilding: `riegel serve` then runs with LD_PRELOAD=that file)
# ADAPTIVE_SCHEDULING (true: riegel's default; false: its shard threads stay
# SCHED_OTHER) NGINX_SCHED (other: nginx's default; batch: the front nginx's
# workers are put in SCHED_BATCH with chrt, to see what riegel's adaptive
# scheduling would give nginx).
#
# STORE (sled: the default, a sled directory in the work dir; postgres: a
# fresh database on the PostgreSQL server at BENCH_POSTGRES_URL, a role that
# may create databases, default postgres://riegel_test:riegel@127.0.0.1:5432/postgres;
# the database is dropped on exit. Start a server first, see README.md
# "Two instances").
#
# Everything started here is stopped by PID on exit (trap), whatever happens.

set -euo pipefail

ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-10}
THREADS=${THREADS:-2}
CONNS=${CONNS:-50}
STORM=${STORM:-50}
HOLD_CONNS=${HOLD_CONNS:-1000}
UPSTREAM_WORKERS=${UPSTREAM_WORKERS:-1}
NGINX_WORKERS=${NGINX_WORKERS:-auto}
KEEP_WORK=${KEEP_WORK:-0}
SKIP_BUILD=${SKIP_BUILD:-0}
RIEGEL_PRELOAD=${RIEGEL_PRELOAD:-}
ADAPTIVE_SCHEDULING=${ADAPTIVE_SCHEDULING:-true}
NGINX_SCHED=${NGINX_SCHED:-other}
STORE=${STORE:-sled}
BENCH_POSTGRES_URL=${BENCH_POSTGRES_URL:-postgres://riegel_test:riegel@127.0.0.1:5432/postgres}

EXTRA=""
[[ $ADAPTIVE_SCHEDULING == true ]] || EXTRA+=" ADAPTIVE_SCHEDULING=$ADAPTIVE_SCHEDULING"
[[ $NGINX_SCHED == other ]] || EXTRA+=" NGINX_SCHED=$NGINX_SCHED"
[[ $STORE == sled ]] || EXTRA+=" STORE=$STORE"
COMMAND="ROUNDS=$ROUNDS DURATION=$DURATION THREADS=$THREADS CONNS=$CONNS STORM=$STORM${RIEGEL_PRELOAD:+ RIEGEL_PRELOAD=$RIEGEL_PRELOAD}$EXTRA bash benches/load.sh"
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
BIN=$TARGET_DIR/release/riegel

say() { printf '\n==> %s\n' "$*" >&2; }
info() { printf '    %s\n' "$*" >&2; }
die() { printf '\nload.sh: ERROR: %s\n' "$*" >&2; exit 1; }

for v in ROUNDS DURATION THREADS CONNS STORM HOLD_CONNS; do
    [[ ${!v} =~ ^[1-9][0-9]*$ ]] || die "$v must be a positive whole number (got '${!v}')"
done
[[ $ADAPTIVE_SCHEDULING == true || $ADAPTIVE_SCHEDULING == false ]] || die "ADAPTIVE_SCHEDULING must be true or false (got '$ADAPTIVE_SCHEDULING')"
[[ $NGINX_SCHED == other || $NGINX_SCHED == batch ]] || die "NGINX_SCHED must be other or batch (got '$NGINX_SCHED')"
[[ $STORE == sled || $STORE == postgres ]] || die "STORE must be sled or postgres (got '$STORE')"

# ---------------------------------------------------------------- cleanup ---
PIDS=()          # every background process we started, stopped by PID on exit
WORK=""
PG_DB=""         # the database made for STORE=postgres, dropped on exit
cleanup() {
    local rc=$?
    set +e
    [[ -n $WORK ]] && touch "$WORK/storm/stop" 2>/dev/null
    local p
    for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null; done
    for _ in $(seq 1 50); do
        local alive=0
        for p in "${PIDS[@]}"; do kill -0 "$p" 2>/dev/null && alive=1; done
        [[ $alive == 0 ]] && break
        sleep 0.1
    done
    for p in "${PIDS[@]}"; do kill -KILL "$p" 2>/dev/null; done
    wait 2>/dev/null
    if [[ -n $PG_DB ]]; then
        psql "$BENCH_POSTGRES_URL" -qXc "DROP DATABASE IF EXISTS $PG_DB WITH (FORCE)" >/dev/null 2>&1 \
            || info "could not drop database $PG_DB"
    fi
    if [[ -n $WORK && -d $WORK ]]; then
        if [[ $KEEP_WORK == 1 ]]; then
            info "work dir kept: $WORK"
        else
            # Keys, the store and the temp files go; report and logs stay.
            rm -rf "$WORK/data" "$WORK/keys" "$WORK/storm" "$WORK/ngx" "$WORK/www" "$WORK/outbox" "$WORK/jar" 2>/dev/null
            info "report and logs kept in: $WORK"
        fi
    fi
    [[ $rc != 0 ]] && printf 'load.sh: failed (exit %s); logs in %s\n' "$rc" "${WORK:-?}" >&2
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ----------------------------------------------------------- prerequisites ---
say "checking tools"
need=()
command -v wrk >/dev/null || need+=(wrk)
command -v nginx >/dev/null || [[ -x /usr/sbin/nginx ]] || need+=(nginx)
command -v oathtool >/dev/null || need+=(oathtool)
command -v curl >/dev/null || need+=(curl)
command -v openssl >/dev/null || need+=(openssl)
command -v python3 >/dev/null || need+=(python3)
[[ $STORE == postgres ]] && { command -v psql >/dev/null || need+=(postgresql-client); }
if ((${#need[@]})); then
    info "installing: ${need[*]}"
    SUDO=""
    if [[ $EUID != 0 ]]; then
        command -v sudo >/dev/null || die "missing ${need[*]} and not root (no sudo): install them first"
        SUDO=sudo
    fi
    command -v apt-get >/dev/null || die "missing ${need[*]} and no apt-get: install them first"
    $SUDO apt-get update -qq || die "apt-get update failed"
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null \
        || die "apt-get install ${need[*]} failed"
fi
NGINX=$(command -v nginx || echo /usr/sbin/nginx)
"$NGINX" -V 2>&1 | grep -q -- --with-http_auth_request_module \
    || die "this nginx lacks http_auth_request_module (needed for the auth_request baseline)"

# Enough file descriptors for 1,000 connections on each side (inherited by
# everything started below).
hard=$(ulimit -Hn)
want=65536
[[ $hard != unlimited && $hard -lt $want ]] && want=$hard
ulimit -n "$want" 2>/dev/null || true
(($(ulimit -n) >= HOLD_CONNS * 2 + 100)) || die "ulimit -n is $(ulimit -n); need at least $((HOLD_CONNS * 2 + 100))"

# ------------------------------------------------------------------- build ---
say "riegel release binary"
if [[ $SKIP_BUILD == 1 && -x $BIN ]]; then
    info "SKIP_BUILD=1: using $BIN as is"
elif [[ -x $BIN ]] && [[ -z $(find "$ROOT/src" "$ROOT/pages" "$ROOT/Cargo.toml" "$ROOT/Cargo.lock" "$ROOT/build.rs" \
    -newer "$BIN" -print -quit 2>/dev/null) ]]; then
    info "reusing $BIN (newer than every source)"
else
    command -v cargo >/dev/null || die "cargo not found (install Rust: https://rustup.rs)"
    command -v cmake >/dev/null || info "note: pingora needs cmake to build (apt-get install cmake)"
    info "cargo build --release (fat LTO: several minutes on 2 cores)"
    t0=$SECONDS
    (cd "$ROOT" && cargo build --release --bin riegel) || die "cargo build --release failed"
    info "built in $((SECONDS - t0)) s"
fi
[[ -x $BIN ]] || die "no binary at $BIN"

# ----------------------------------------------------------------- helpers ---
WORK=$(mktemp -d "${TMPDIR:-/tmp}/riegel-load.XXXXXX")
mkdir -p "$WORK"/{www,ngx,data,keys,outbox,wrk,storm,logs}
chmod 700 "$WORK/keys"
info "work dir: $WORK"

port_busy() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
USED_PORTS=" "
# Listening ports come from below the kernel's ephemeral range: a port in it
# may be taken between the check and the bind by an outgoing connection
# (wrk opens thousands), and nginx then fails with "Address already in use".
EPHEMERAL_LOW=$(awk '{ print $1 }' /proc/sys/net/ipv4/ip_local_port_range 2>/dev/null || echo 32768)
(( EPHEMERAL_LOW > 12000 )) || EPHEMERAL_LOW=32768
free_port() {
    local p
    for _ in $(seq 1 200); do
        p=$((10000 + RANDOM % (EPHEMERAL_LOW - 10000)))
        [[ $USED_PORTS == *" $p "* ]] && continue
        if ! port_busy "$p"; then USED_PORTS+="$p "; echo "$p"; return 0; fi
    done
    die "no free port found"
}
# wait_port PORT PID NAME LOG
wait_port() {
    local port=$1 pid=$2 name=$3 log=$4
    for _ in $(seq 1 150); do
        port_busy "$port" && return 0
        if ! kill -0 "$pid" 2>/dev/null; then
            tail -n 30 "$log" >&2 2>/dev/null || true
            die "$name exited before listening on 127.0.0.1:$port (log: $log)"
        fi
        sleep 0.1
    done
    tail -n 30 "$log" >&2 2>/dev/null || true
    die "$name did not listen on 127.0.0.1:$port within 15 s (log: $log)"
}
rss_kb() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status" 2>/dev/null || echo 0; }
hwm_kb() { awk '/^VmHWM:/ {print $2}' "/proc/$1/status" 2>/dev/null || echo 0; }
mb() { awk -v k="$1" 'BEGIN { printf "%.1f", k / 1024 }'; }
# The value of the hidden csrf input of an HTML page (stdin).
extract_csrf() {
    { grep -o '<input[^>]*name="csrf"[^>]*>' || true; } | head -n1 | sed -n 's/.*value="\([^"]*\)".*/\1/p'
}
# wrk latency value (e.g. 812.00us, 1.23ms, 2.01s, 1.00m) -> milliseconds
to_ms() {
    awk -v v="$1" 'BEGIN {
        if (v ~ /us$/) { sub(/us$/, "", v); printf "%.3f", v / 1000 }
        else if (v ~ /ms$/) { sub(/ms$/, "", v); printf "%.3f", v }
        else if (v ~ /m$/) { sub(/m$/, "", v); printf "%.3f", v * 60000 }
        else if (v ~ /s$/) { sub(/s$/, "", v); printf "%.3f", v * 1000 }
        else printf "nan" }'
}
median() {
    sort -g | awk '{ a[NR] = $1 } END {
        if (NR == 0) { print "nan"; exit }
        if (NR % 2) print a[(NR + 1) / 2]; else printf "%.3f\n", (a[NR / 2] + a[NR / 2 + 1]) / 2 }'
}
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b + 0 == 0) print "n/a"; else printf "%.2f", a / b }'; }

PA=$(free_port) # nginx upstream (the 1 KiB file)
PB=$(free_port) # riegel
PC=$(free_port) # nginx proxy_pass
PD=$(free_port) # nginx auth_request
RB=http://127.0.0.1:$PB

# ------------------------------------------------------------ the upstream ---
say "nginx upstream on 127.0.0.1:$PA (worker_processes $UPSTREAM_WORKERS)"
head -c 1024 /dev/zero | tr '\0' 'x' >"$WORK/www/1k.html"
cp "$WORK/www/1k.html" "$WORK/www/index.html"
head -c 318 /dev/zero | tr '\0' 'i' >"$WORK/www/favicon.ico"
USER_LINE=""
# As root, nginx workers would switch to `nobody`; keep them as the caller so
# they can read the temp dir.
[[ $EUID == 0 ]] && USER_LINE="user $(id -un) $(id -gn);"

ngx_common() { # $1 = name
    cat <<EOF
daemon off;
$USER_LINE
pid $WORK/ngx/$1.pid;
error_log $WORK/logs/nginx-$1.error.log warn;
events { worker_connections 8192; }
EOF
}
ngx_http_common() { # $1 = name
    cat <<EOF
    access_log off;
    keepalive_requests 1000000;
    keepalive_timeout 75s;
    client_body_temp_path $WORK/ngx/$1-body;
    proxy_temp_path $WORK/ngx/$1-proxy;
    fastcgi_temp_path $WORK/ngx/$1-fastcgi;
    uwsgi_temp_path $WORK/ngx/$1-uwsgi;
    scgi_temp_path $WORK/ngx/$1-scgi;
    default_type text/html;
EOF
}

# start_nginx NAME PORT...: checks and starts $WORK/nginx-NAME.conf in the
# background, records its PID in NGX_PID and PIDS, waits for every PORT.
start_nginx() {
    local name=$1 conf="$WORK/nginx-$1.conf" log="$WORK/logs/nginx-$1.error.log" port
    shift
    "$NGINX" -t -q -c "$conf" -p "$WORK/ngx" -e "$log" || die "nginx $name config is invalid ($conf)"
    ${NGX_PREFIX:-} "$NGINX" -c "$conf" -p "$WORK/ngx" -e "$log" >"$WORK/logs/nginx-$name.out" 2>&1 &
    NGX_PID=$!
    PIDS+=("$NGX_PID")
    for port in "$@"; do
        wait_port "$port" "$NGX_PID" "nginx $name" "$log"
    done
}

{
    echo "worker_processes $UPSTREAM_WORKERS;"
    ngx_common upstream
    echo "http {"
    ngx_http_common upstream
    cat <<EOF
    server {
        listen 127.0.0.1:$PA;
        root $WORK/www;
        location / { }
    }
}
EOF
} >"$WORK/nginx-upstream.conf"
start_nginx upstream "$PA"

# ------------------------------------------------------------------ riegel ---
say "riegel on 127.0.0.1:$PB"
(umask 077 && openssl rand -hex 32 >"$WORK/keys/session.key" && openssl rand -hex 32 >"$WORK/keys/storage.key")
chmod 600 "$WORK/keys/session.key" "$WORK/keys/storage.key"
if [[ $STORE == postgres ]]; then
    psql "$BENCH_POSTGRES_URL" -qXc "SELECT 1" >/dev/null 2>"$WORK/logs/psql.err" \
        || die "no PostgreSQL at BENCH_POSTGRES_URL ($(head -c 300 "$WORK/logs/psql.err")); start one: apt-get install postgresql && pg_ctlcluster 15 main start, then create a role that may create databases (README.md, Two instances)"
    PG_DB="riegel_bench_$$"
    psql "$BENCH_POSTGRES_URL" -qXc "CREATE DATABASE $PG_DB" >/dev/null || die "cannot create database $PG_DB"
    PG_URL=$(python3 -c 'import sys, urllib.parse as u; p = u.urlsplit(sys.argv[1]); print(u.urlunsplit(p._replace(path="/" + sys.argv[2])))' "$BENCH_POSTGRES_URL" "$PG_DB")
    (umask 077 && printf '%s\n' "$PG_URL" >"$WORK/keys/pg.url")
    STORE_YAML="store:
  postgres:
    url_file: \"$WORK/keys/pg.url\""
    info "store: PostgreSQL database $PG_DB"
else
    STORE_YAML="store:
  path: \"$WORK/data\""
fi
CFG=$WORK/riegel.yaml
cat >"$CFG" <<EOF
# generated by benches/load.sh
listen: "127.0.0.1:$PB"
public_url: "http://127.0.0.1:$PB"
upstream:
  url: "http://127.0.0.1:$PA"
$STORE_YAML
secrets:
  session_key_file: "$WORK/keys/session.key"
  storage_key_file: "$WORK/keys/storage.key"
mail:
  from: "Bench <bench@example.invalid>"
  outbox: "$WORK/outbox"
branding:
  company: "Bench GmbH"
  portal_name: "Portal"
  language: en
totp:
  issuer: "Bench"
server:
  adaptive_scheduling: $ADAPTIVE_SCHEDULING
# The login storm comes from one address (127.0.0.1) with random usernames:
# per-account counters never fill; the per-address limit (4 x max_failures =
# 400 failures within find_time) resets every second.
regulation:
  max_failures: 100
  find_time: 1s
  delay_after: 100
  delay_step: 1ms
EOF
"$BIN" check-config --config "$CFG" >"$WORK/logs/check-config.out" 2>&1 \
    || { cat "$WORK/logs/check-config.out" >&2; die "riegel check-config refused the generated config ($CFG)"; }

PW="bench-$(openssl rand -hex 12)"
printf '%s\n' "$PW" >"$WORK/keys/password"
"$BIN" user add bench --config "$CFG" --email b@example.invalid <"$WORK/keys/password" >"$WORK/logs/user-add.out" 2>&1 \
    || { cat "$WORK/logs/user-add.out" >&2; die "riegel user add failed"; }

if [[ -n $RIEGEL_PRELOAD ]]; then
    [[ -r $RIEGEL_PRELOAD ]] || die "RIEGEL_PRELOAD=$RIEGEL_PRELOAD is not a readable file"
    info "riegel runs with LD_PRELOAD=$RIEGEL_PRELOAD"
    LD_PRELOAD=$RIEGEL_PRELOAD "$BIN" serve --config "$CFG" >"$WORK/logs/riegel.log" 2>&1 &
else
    "$BIN" serve --config "$CFG" >"$WORK/logs/riegel.log" 2>&1 &
fi
RIEGEL=$!
PIDS+=("$RIEGEL")
wait_port "$PB" "$RIEGEL" "riegel" "$WORK/logs/riegel.log"
RSS_START=$(rss_kb "$RIEGEL")

# ------------------------------------------------------------------- login ---
say "logging in user 'bench' through the real pages"
JAR=$WORK/jar
: >"$JAR"
c() { curl -sS --max-time 10 -b "$JAR" -c "$JAR" "$@"; }
page=$(c "$RB/_riegel/login") || die "GET /_riegel/login failed"
csrf=$(extract_csrf <<<"$page")
[[ -n $csrf ]] || { printf '%s\n' "$page" | head -c 2000 >&2; die "no hidden csrf input on /_riegel/login (are the real pages built in?)"; }
code=$(c -o "$WORK/logs/login-post.html" -w '%{http_code}' -H "Origin: $RB" \
    --data-urlencode "username=bench" --data-urlencode "password=$PW" --data-urlencode "csrf=$csrf" "$RB/_riegel/login")
[[ $code == 303 || $code == 302 ]] || die "POST /_riegel/login answered $code, expected a redirect (see $WORK/logs/login-post.html)"
page=$(c "$RB/_riegel/setup") || die "GET /_riegel/setup failed"
uri=$({ grep -o 'href="otpauth://[^"]*"' || true; } <<<"$page" | head -n1 | sed -e 's/^href="//' -e 's/"$//' -e 's/&amp;/\&/g')
[[ -n $uri ]] || { printf '%s\n' "$page" | head -c 2000 >&2; die "no otpauth:// link on /_riegel/setup"; }
secret=$(sed -n 's/.*[?&]secret=\([A-Za-z2-7=%]*\).*/\1/p' <<<"$uri")
[[ -n $secret ]] || die "no secret in the otpauth URI"
page=$(c "$RB/_riegel/setup/confirm") || die "GET /_riegel/setup/confirm failed"
csrf=$(extract_csrf <<<"$page")
[[ -n $csrf ]] || die "no hidden csrf input on /_riegel/setup/confirm"
totp=$(oathtool --totp -b "$secret") || die "oathtool failed on the secret from the page"
code=$(c -o "$WORK/logs/confirm-post.html" -w '%{http_code}' -H "Origin: $RB" \
    --data-urlencode "code=$totp" --data-urlencode "csrf=$csrf" "$RB/_riegel/setup/confirm")
[[ $code == 200 || $code == 303 ]] || die "POST /_riegel/setup/confirm answered $code (see $WORK/logs/confirm-post.html)"
SESSION=$(awk -F'\t' '$6 == "riegel_session" { v = $7 } END { print v }' "$JAR")
[[ -n $SESSION ]] || die "no riegel_session cookie in the jar after enrolment"
COOKIE="Cookie: riegel_session=$SESSION"
info "session cookie obtained (${#SESSION} characters)"

# --------------------------------------------------------- nginx baselines ---
say "nginx proxy_pass on 127.0.0.1:$PC and nginx+auth_request on 127.0.0.1:$PD (worker_processes $NGINX_WORKERS)"
{
    echo "worker_processes $NGINX_WORKERS;"
    ngx_common front
    echo "http {"
    ngx_http_common front
    cat <<EOF
    upstream backend {
        server 127.0.0.1:$PA;
        keepalive 64;
        keepalive_requests 1000000;
    }
    upstream riegel_auth {
        server 127.0.0.1:$PB;
        keepalive 64;
        keepalive_requests 1000000;
    }
    # C: plain proxy_pass, upstream keep-alive.
    server {
        listen 127.0.0.1:$PC;
        location / {
            proxy_pass http://backend;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }
    }
    # D: auth_request against riegel's forward-auth endpoint, then proxy_pass.
    server {
        listen 127.0.0.1:$PD;
        location = /_auth {
            internal;
            proxy_pass http://riegel_auth/_riegel/auth;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host 127.0.0.1:$PB;
            proxy_set_header Cookie \$http_cookie;
            proxy_set_header X-Original-URI \$request_uri;
            proxy_pass_request_body off;
            proxy_set_header Content-Length "";
        }
        location / {
            auth_request /_auth;
            auth_request_set \$user \$upstream_http_x_riegel_user;
            proxy_pass http://backend;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Remote-User \$user;
        }
    }
}
EOF
} >"$WORK/nginx-front.conf"
NGX_PREFIX=""
if [[ $NGINX_SCHED == batch ]]; then
    # Started in the class, so every worker inherits it (no race with the
    # workers' fork).
    command -v chrt >/dev/null || die "NGINX_SCHED=batch needs chrt (util-linux)"
    NGX_PREFIX="chrt -b 0"
fi
start_nginx front "$PC" "$PD"
NGX_PREFIX=""
if [[ $NGINX_SCHED == batch ]]; then
    info "front nginx started in SCHED_BATCH: $(chrt -p "$NGX_PID" | head -n1)"
fi

# ------------------------------------------------------------ sanity checks ---
say "checking every set-up answers 200 with the 1 KiB file"
NAMES=(direct riegel proxy_pass auth_request)
declare -A URL=(
    [direct]="http://127.0.0.1:$PA/1k.html"
    [riegel]="$RB/1k.html"
    [proxy_pass]="http://127.0.0.1:$PC/1k.html"
    [auth_request]="http://127.0.0.1:$PD/1k.html"
)
declare -A LABEL=(
    [direct]="nginx direct (reference, no proxy)"
    [riegel]="**riegel**"
    [proxy_pass]="nginx proxy_pass"
    [auth_request]="nginx + auth_request (riegel /_riegel/auth)"
)
for n in "${NAMES[@]}"; do
    got=$(curl -sS --max-time 5 -o /dev/null -w '%{http_code} %{size_download}' -H "$COOKIE" "${URL[$n]}") || got="error"
    [[ $got == "200 1024" ]] || die "$n: ${URL[$n]} with the session cookie answered '$got', expected '200 1024'"
done
got=$(curl -sS --max-time 5 -o /dev/null -w '%{http_code}' "$RB/1k.html")
[[ $got == 303 || $got == 302 ]] || die "riegel without cookie answered $got, expected a redirect to the login"
got=$(curl -sS --max-time 5 -o /dev/null -w '%{http_code}' "${URL[auth_request]}")
[[ $got == 401 ]] || die "auth_request without cookie answered $got, expected 401"
got=$(curl -sS --max-time 5 -o /dev/null -w '%{http_code}' -H "$COOKIE" "$RB/")
[[ $got == 200 ]] || die "GET / through riegel answered $got, expected 200 from the upstream"
info "all four answer 200/1024 B with the cookie; riegel redirects and auth_request says 401 without it"

sleep 1
RSS_IDLE=$(rss_kb "$RIEGEL")

# ---------------------------------------------------------------- the runs ---
# run_wrk NAME OUTFILE [extra wrk args...]: runs wrk against URL[NAME] and
# prints "rps p50_ms p99_ms"; the raw output stays in OUTFILE.
run_wrk() {
    local name=$1 out=$2
    shift 2
    wrk -t"$THREADS" -c"$CONNS" -d"${DURATION}s" --latency -H "$COOKIE" "$@" "${URL[$name]}" >"$out" 2>&1 \
        || { cat "$out" >&2; die "wrk failed for $name"; }
    kill -0 "$RIEGEL" 2>/dev/null || { tail -n 30 "$WORK/logs/riegel.log" >&2; die "riegel died during the $name run"; }
    local rps p50 p99 bad
    rps=$(awk '/^Requests\/sec:/ { print $2 }' "$out")
    p50=$(awk '$1 == "50%" { print $2 }' "$out")
    p99=$(awk '$1 == "99%" { print $2 }' "$out")
    bad=$(awk '/Non-2xx or 3xx responses:/ { print $NF }' "$out")
    [[ -n $rps && -n $p50 && -n $p99 ]] || { cat "$out" >&2; die "could not parse the wrk output for $name"; }
    [[ -z $bad ]] || info "WARNING: $name: $bad non-2xx/3xx answers (see $out)"
    grep -q 'Socket errors' "$out" && info "WARNING: $name: $(grep 'Socket errors' "$out" | sed 's/^ *//')"
    echo "$rps $(to_ms "$p50") $(to_ms "$p99")"
}

say "interleaved rounds: $ROUNDS x (${NAMES[*]}), wrk -t$THREADS -c$CONNS -d${DURATION}s"
T_RUNS=$SECONDS
LOAD_START=$(cut -d' ' -f1-3 /proc/loadavg)
for r in $(seq 1 "$ROUNDS"); do
    for n in "${NAMES[@]}"; do
        read -r rps p50 p99 < <(run_wrk "$n" "$WORK/wrk/$n-r$r.txt")
        echo "$rps" >>"$WORK/wrk/$n.rps"
        echo "$p50" >>"$WORK/wrk/$n.p50"
        echo "$p99" >>"$WORK/wrk/$n.p99"
        info "round $r  $(printf '%-13s' "$n") $(printf '%10s' "$rps") req/s  p50 $(printf '%8s' "$p50") ms  p99 $(printf '%8s' "$p99") ms"
    done
done
declare -A MRPS MP50 MP99 ALLRPS
for n in "${NAMES[@]}"; do
    MRPS[$n]=$(median <"$WORK/wrk/$n.rps")
    MP50[$n]=$(median <"$WORK/wrk/$n.p50")
    MP99[$n]=$(median <"$WORK/wrk/$n.p99")
    ALLRPS[$n]=$(awk '{ printf "%s%.0f", (NR > 1 ? " / " : ""), $1 }' "$WORK/wrk/$n.rps")
done
RSS_AFTER=$(rss_kb "$RIEGEL")

# --------------------------------------------------------------------- RSS ---
say "RSS: holding $HOLD_CONNS keep-alive connections, then wrk -c$HOLD_CONNS"
cat >"$WORK/hold.py" <<'EOF'
import socket, sys, time
host, port, n, hold, ready = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4]), sys.argv[5]
req = ("GET /favicon.ico HTTP/1.1\r\nHost: %s:%d\r\nConnection: keep-alive\r\n\r\n" % (host, port)).encode()
socks = []
t0 = time.time()
close = 0
for _ in range(n):
    s = socket.create_connection((host, port), timeout=10)
    s.sendall(req)
    socks.append(s)
ok = 0
for s in socks:
    buf = b""
    try:
        while b"\r\n\r\n" not in buf:
            chunk = s.recv(65536)
            if not chunk:
                break
            buf += chunk
    except OSError:
        pass
    if buf.startswith(b"HTTP/1.1 200"):
        ok += 1
    if b"\r\nconnection: close" in buf.lower():
        close += 1
with open(ready, "w") as f:
    f.write("%d %d %.2f\n" % (ok, close, time.time() - t0))
time.sleep(hold)
still = 0
for s in socks:
    # non-blocking peek: a closed connection reads EOF (b""), an open idle
    # one raises BlockingIOError, unread body bytes count as open
    s.setblocking(False)
    try:
        still += 0 if s.recv(1, socket.MSG_PEEK) == b"" else 1
    except BlockingIOError:
        still += 1
    except OSError:
        pass
for s in socks:
    s.close()
with open(ready, "a") as f:
    f.write("%d\n" % still)
EOF
RSS_PRE_HOLD=$(rss_kb "$RIEGEL")
rm -f "$WORK/hold.ready"
python3 "$WORK/hold.py" 127.0.0.1 "$PB" "$HOLD_CONNS" 3 "$WORK/hold.ready" >"$WORK/logs/hold.out" 2>&1 &
HOLD=$!
PIDS+=("$HOLD")
for _ in $(seq 1 300); do [[ -s $WORK/hold.ready ]] && break; kill -0 "$HOLD" 2>/dev/null || break; sleep 0.1; done
[[ -s $WORK/hold.ready ]] || { cat "$WORK/logs/hold.out" >&2; die "the connection holder did not get its $HOLD_CONNS answers"; }
sleep 1
RSS_HOLD=$(rss_kb "$RIEGEL")
wait "$HOLD" || { cat "$WORK/logs/hold.out" >&2; die "the connection holder failed"; }
read -r HOLD_OK HOLD_CLOSE HOLD_SECS <"$WORK/hold.ready"
HOLD_STILL=$(sed -n 2p "$WORK/hold.ready")
info "holding $HOLD_OK/$HOLD_CONNS answered connections (opened and answered in $HOLD_SECS s; $HOLD_CLOSE answers said Connection: close; $HOLD_STILL still open after 3 s more): VmRSS $(mb "$RSS_HOLD") MB"

sleep 1
RSS_PEAK=0
DUR_1K=5
wrk -t2 -c"$HOLD_CONNS" -d"${DUR_1K}s" --latency "$RB/favicon.ico" >"$WORK/wrk/c1000.txt" 2>&1 &
W1K=$!
PIDS+=("$W1K")
while kill -0 "$W1K" 2>/dev/null; do
    r=$(rss_kb "$RIEGEL")
    ((r > RSS_PEAK)) && RSS_PEAK=$r
    sleep 0.2
done
wait "$W1K" || { cat "$WORK/wrk/c1000.txt" >&2; die "wrk -c$HOLD_CONNS failed"; }
kill -0 "$RIEGEL" 2>/dev/null || { tail -n 30 "$WORK/logs/riegel.log" >&2; die "riegel died under wrk -c$HOLD_CONNS"; }
C1K_RPS=$(awk '/^Requests\/sec:/ { print $2 }' "$WORK/wrk/c1000.txt")
C1K_P99=$(to_ms "$(awk '$1 == "99%" { print $2 }' "$WORK/wrk/c1000.txt")")
C1K_ERR=$(grep 'Socket errors' "$WORK/wrk/c1000.txt" | sed 's/^ *//' || true)
sleep 1
RSS_END=$(rss_kb "$RIEGEL")
info "wrk -c$HOLD_CONNS: peak VmRSS $(mb "$RSS_PEAK") MB, $C1K_RPS req/s ${C1K_ERR:+($C1K_ERR)}"

# -------------------------------------------------------------- login storm ---
say "login storm: $ROUNDS interleaved rounds of riegel alone, then with $STORM parallel wrong-password logins"
sleep 2 # let the connections of the previous step close
LOAD_STORM=$(cut -d' ' -f1-3 /proc/loadavg)

# The storm is one wrk process with a Lua script: $STORM connections, each
# posting a wrong password for a random username as soon as its previous
# login was answered, so $STORM logins are always in flight. (50 forking
# curl loops would mostly measure their own CPU use on a 2-core machine.)
STORM_JAR="$WORK/storm/jar"
STORM_PAGE=$(curl -s --max-time 10 -c "$STORM_JAR" -b "$STORM_JAR" "$RB/_riegel/login") || die "storm: no login page"
STORM_CSRF=$(extract_csrf <<<"$STORM_PAGE")
STORM_COOKIE=$(awk '{ sub(/^#HttpOnly_/, "") } !/^#/ && NF >= 7 { printf "%s%s=%s", (n++ ? "; " : ""), $6, $7 }' "$STORM_JAR")
[[ -n $STORM_CSRF && -n $STORM_COOKIE ]] || die "storm: no csrf token or cookie"
cat >"$WORK/storm/storm.lua" <<LUA
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/x-www-form-urlencoded"
wrk.headers["Origin"] = "$RB"
wrk.headers["Cookie"] = "$STORM_COOKIE"
math.randomseed(os.time())
request = function()
  local body = "username=storm-" .. math.random(1, 2000000000) .. "&password=wrong-" .. math.random(1, 2000000000) .. "&csrf=$STORM_CSRF"
  return wrk.format(nil, nil, nil, body)
end
LUA
# Like the comparison above, alone and during alternate ($ROUNDS rounds) and
# the medians are compared: one pair of 10-second runs on a shared 2-vCPU
# machine moves by more than the effect measured.
STORM_SECS=$((DURATION + 6))
STORM_TOTAL=0
N429=0
STORM_WINDOW=0
for r in $(seq 1 "$ROUNDS"); do
    read -r rps p50 p99 < <(run_wrk riegel "$WORK/wrk/storm-alone-r$r.txt")
    echo "$rps" >>"$WORK/wrk/storm-alone.rps"; echo "$p50" >>"$WORK/wrk/storm-alone.p50"; echo "$p99" >>"$WORK/wrk/storm-alone.p99"
    info "round $r  alone         $(printf '%10s' "$rps") req/s  p50 $(printf '%8s' "$p50") ms  p99 $(printf '%8s' "$p99") ms"
    wrk -t1 -c"$STORM" -d"${STORM_SECS}s" --timeout 30s -s "$WORK/storm/storm.lua" "$RB/_riegel/login" >"$WORK/wrk/storm-logins-r$r.txt" 2>&1 &
    STORM_PID=$!
    PIDS+=("$STORM_PID")
    sleep 3 # the argon2 queue is full
    T_BEFORE=$(date +%s.%N)
    read -r rps p50 p99 < <(run_wrk riegel "$WORK/wrk/storm-during-r$r.txt")
    T_AFTER=$(date +%s.%N)
    echo "$rps" >>"$WORK/wrk/storm-during.rps"; echo "$p50" >>"$WORK/wrk/storm-during.p50"; echo "$p99" >>"$WORK/wrk/storm-during.p99"
    RSS_STORM=$(rss_kb "$RIEGEL")
    wait "$STORM_PID" 2>/dev/null || true
    total=$(awk '/requests in/ { print $1 }' "$WORK/wrk/storm-logins-r$r.txt")
    bad=$(awk '/Non-2xx or 3xx responses:/ { print $NF }' "$WORK/wrk/storm-logins-r$r.txt")
    total=${total:-0}
    STORM_TOTAL=$((STORM_TOTAL + total))
    N429=$((N429 + ${bad:-0}))
    STORM_WINDOW=$(awk -v w="$STORM_WINDOW" -v n="$total" -v d="$STORM_SECS" -v a="$T_BEFORE" -v b="$T_AFTER" 'BEGIN { printf "%.0f", w + n / d * (b - a) }')
    info "round $r  during storm  $(printf '%10s' "$rps") req/s  p50 $(printf '%8s' "$p50") ms  p99 $(printf '%8s' "$p99") ms  ($total logins in ${STORM_SECS} s)"
    sleep 2 # let riegel drain what is left
done
S0_RPS=$(median <"$WORK/wrk/storm-alone.rps"); S0_P50=$(median <"$WORK/wrk/storm-alone.p50"); S0_P99=$(median <"$WORK/wrk/storm-alone.p99")
S1_RPS=$(median <"$WORK/wrk/storm-during.rps"); S1_P50=$(median <"$WORK/wrk/storm-during.p50"); S1_P99=$(median <"$WORK/wrk/storm-during.p99")
S0_ALL=$(awk '{ printf "%s%.2f", (NR > 1 ? " / " : ""), $1 }' "$WORK/wrk/storm-alone.p99")
S1_ALL=$(awk '{ printf "%s%.2f", (NR > 1 ? " / " : ""), $1 }' "$WORK/wrk/storm-during.p99")
STORM_CODES="200: $((STORM_TOTAL - N429)), other (429 = address banned): $N429"
STORM_RATE=$(awk -v n="$STORM_TOTAL" -v d="$((STORM_SECS * ROUNDS))" 'BEGIN { printf "%.1f", n / d }')
info "medians: alone p99 $S0_P99 ms, during the storm p99 $S1_P99 ms"
info "storm answers: $STORM_CODES ($STORM_TOTAL in all; about $STORM_WINDOW during the measurements = $STORM_RATE logins/s)"
RSS_POST_STORM=$(rss_kb "$RIEGEL")
HWM=$(hwm_kb "$RIEGEL")

# ------------------------------------------------------------------ report ---
CPU=$(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo 2>/dev/null || echo unknown)
GIT=$(cd "$ROOT" && git rev-parse --short HEAD 2>/dev/null || echo "?")
DIRTY=$(cd "$ROOT" && [[ -n $(git status --porcelain -- src pages Cargo.toml 2>/dev/null) ]] && echo " (uncommitted changes in src/pages)" || true)
RIEGEL_THREADS=$(awk '/^Threads:/ { print $2 }' "/proc/$RIEGEL/status" 2>/dev/null || echo "?")
ok() { awk -v v="$1" -v t="$2" -v dir="$3" 'BEGIN { if (v == "n/a") print "?"; else if ((dir == ">=" && v + 0 >= t + 0) || (dir == "<=" && v + 0 <= t + 0) || (dir == "<" && v + 0 < t + 0)) print "yes"; else print "**no**" }'; }

R_PP=$(ratio "${MRPS[riegel]}" "${MRPS[proxy_pass]}")
R_AR=$(ratio "${MRPS[riegel]}" "${MRPS[auth_request]}")
R_P99=$(ratio "${MP99[riegel]}" "${MP99[proxy_pass]}")
R_STORM=$(ratio "$S1_P99" "$S0_P99")
R_STORM_RPS=$(ratio "$S1_RPS" "$S0_RPS")

REPORT=$WORK/results.md
{
    echo "## riegel load comparison"
    echo
    echo "- date: $(date -u '+%Y-%m-%d %H:%M:%S UTC')"
    echo "- machine: $(nproc) CPUs ($CPU), $(uname -sr)"
    echo "- riegel: $GIT$DIRTY, release build${RIEGEL_PRELOAD:+ run with LD_PRELOAD=$RIEGEL_PRELOAD}, $RIEGEL_THREADS OS threads in the process; nginx $("$NGINX" -v 2>&1 | sed 's/.*nginx\///'), upstream worker_processes $UPSTREAM_WORKERS, front worker_processes $NGINX_WORKERS; riegel server.adaptive_scheduling $ADAPTIVE_SCHEDULING, front nginx workers SCHED_${NGINX_SCHED^^}"
    echo "- load average (1/5/15 min) before the rounds: $LOAD_START; before the storm: $LOAD_STORM; at the end: $(cut -d' ' -f1-3 /proc/loadavg) (the machine is shared: anything well above the benchmark's own ~2-3 means another job was running)"
    echo "- command: \`$COMMAND\`"
    echo "- store: $STORE"
    echo "- each run: \`wrk -t$THREADS -c$CONNS -d${DURATION}s --latency -H \"Cookie: riegel_session=...\" URL\` (1 KiB static file, loopback), $ROUNDS interleaved rounds, medians"
    echo
    echo "| set-up | req/s (median) | p50 ms | p99 ms | req/s per round |"
    echo "|---|---:|---:|---:|---|"
    for n in "${NAMES[@]}"; do
        printf '| %s | %.0f | %.2f | %.2f | %s |\n' "${LABEL[$n]}" "${MRPS[$n]}" "${MP50[$n]}" "${MP99[$n]}" "${ALLRPS[$n]}"
    done
    echo
    echo "| target | measured | met |"
    echo "|---|---:|:---:|"
    echo "| throughput riegel / nginx proxy_pass >= 1.0 | $R_PP | $(ok "$R_PP" 1.0 '>=') |"
    echo "| throughput riegel / nginx+auth_request >= 1.5 | $R_AR | $(ok "$R_AR" 1.5 '>=') |"
    echo "| p99 riegel / nginx proxy_pass <= 1.0 | $R_P99 | $(ok "$R_P99" 1.0 '<=') |"
    echo "| p99 during login storm / alone <= 1.5 | $R_STORM | $(ok "$R_STORM" 1.5 '<=') |"
    echo "| RSS idle < 25 MB | $(mb "$RSS_START") MB at start, $(mb "$RSS_IDLE") MB after one login | $(ok "$(mb "$RSS_IDLE")" 25 '<') |"
    echo "| RSS with $HOLD_CONNS connections < 60 MB | $(mb "$RSS_HOLD") MB held / $(mb "$RSS_PEAK") MB under wrk | $(ok "$(mb "$RSS_PEAK")" 60 '<') |"
    echo
    echo "### login storm ($STORM workers, wrong passwords, random usernames, from 127.0.0.1)"
    echo
    echo "| riegel, authenticated GETs ($ROUNDS interleaved rounds, medians) | req/s | p50 ms | p99 ms (per round) |"
    echo "|---|---:|---:|---:|"
    printf '| alone | %.0f | %.2f | %.2f (%s) |\n' "$S0_RPS" "$S0_P50" "$S0_P99" "$S0_ALL"
    printf '| during the storm | %.0f | %.2f | %.2f (%s) |\n' "$S1_RPS" "$S1_P50" "$S1_P99" "$S1_ALL"
    echo "| ratio (storm / alone) | $R_STORM_RPS | | $R_STORM |"
    echo
    echo "- storm answers: $STORM_CODES ($STORM_TOTAL logins in $ROUNDS x ${STORM_SECS} s = $STORM_RATE logins/s, about $STORM_WINDOW during the measurements; 200 = the \"login failed\" page after an argon2 verification; the storm is one wrk process with $STORM connections and a Lua script)"
    [[ ${N429:-0} -gt 0 ]] && echo "- NOTE: $N429 answers were 429 (address ban): those logins ran no argon2."
    echo
    echo "### memory (VmRSS of the riegel process)"
    echo
    echo "| state | MB |"
    echo "|---|---:|"
    echo "| just started (no request yet) | $(mb "$RSS_START") |"
    echo "| idle, after the one login (one argon2 run) | $(mb "$RSS_IDLE") |"
    echo "| idle, after the rounds | $(mb "$RSS_AFTER") |"
    echo "| before holding connections | $(mb "$RSS_PRE_HOLD") |"
    echo "| holding $HOLD_OK keep-alive connections (one /favicon.ico each; $HOLD_CLOSE answered with Connection: close; $HOLD_STILL still open 3 s later) | $(mb "$RSS_HOLD") |"
    echo "| peak under \`wrk -t2 -c$HOLD_CONNS -d${DUR_1K}s\` /favicon.ico ($(printf '%.0f' "$C1K_RPS") req/s, p99 $C1K_P99 ms${C1K_ERR:+, $C1K_ERR}) | $(mb "$RSS_PEAK") |"
    echo "| idle afterwards | $(mb "$RSS_END") |"
    echo "| at the end of the last login storm measurement | $(mb "$RSS_STORM") |"
    echo "| 2 s after the storm | $(mb "$RSS_POST_STORM") |"
    echo "| high-water mark (VmHWM) | $(mb "$HWM") |"
    echo
    echo "Measurement time: $((SECONDS - T_RUNS)) s. Raw wrk output, configs and logs: $WORK"
} >"$REPORT"

say "done"
echo
cat "$REPORT"
