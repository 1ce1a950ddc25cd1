#!/usr/bin/env bash
# HTTP/2 on riegel's TLS listener against nginx's HTTP/2 proxy_pass, on
# loopback, bounded in time (about ROUNDS x 4 x DURATION seconds).
#
#   bash benches/h2.sh                          # 3 interleaved rounds of 10 s
#   ROUNDS=2 DURATION=10 bash benches/h2.sh     # quicker
#
# Cases, all authenticated GETs of a 1 KiB file served by an nginx upstream
# (worker_processes 1), TLS 1.3 on the front:
#   R2  riegel serve (tls:, ALPN h2)          h2load, HTTP/2
#   N2  nginx `listen ssl http2` proxy_pass   h2load, HTTP/2
#   R1  riegel serve, the same TLS listener   h2load --h1 (HTTP/1.1 over TLS)
#   N1  nginx, the same server block          h2load --h1
# with `h2load -t$THREADS -c$CONNS -m$STREAMS -D$DURATION` (HTTP/1.1: one
# request in flight per connection), rounds interleaved (R2 N2 R1 N1, ...),
# medians over rounds. The front nginx runs one worker per CPU (auto), as
# riegel runs one shard per CPU. Uses target/release/riegel (builds it when
# a source is newer; SKIP_BUILD=1 takes it as is).
#
# Everything started here is stopped by PID on exit.

set -euo pipefail

ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-10}
THREADS=${THREADS:-2}
CONNS=${CONNS:-50}
STREAMS=${STREAMS:-10}
SKIP_BUILD=${SKIP_BUILD:-0}
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BIN=${CARGO_TARGET_DIR:-$ROOT/target}/release/riegel

say() { printf '\n==> %s\n' "$*" >&2; }
die() { printf '\nh2.sh: ERROR: %s\n' "$*" >&2; exit 1; }
for t in h2load nginx curl openssl oathtool; do
    command -v "$t" >/dev/null || [[ -x /usr/sbin/$t ]] || die "$t is missing (apt-get install -y nghttp2-client nginx curl openssl oathtool)"
done
NGINX=$(command -v nginx || echo /usr/sbin/nginx)

PIDS=()
WORK=$(mktemp -d "${TMPDIR:-/tmp}/riegel-h2.XXXXXX")
cleanup() {
    local rc=$? p
    set +e
    for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null; done
    sleep 0.5
    for p in "${PIDS[@]}"; do kill -KILL "$p" 2>/dev/null; done
    wait 2>/dev/null
    rm -rf "$WORK/data" "$WORK/keys" "$WORK/jar" 2>/dev/null
    [[ $rc != 0 ]] && printf 'h2.sh: failed (exit %s); logs in %s\n' "$rc" "$WORK" >&2
    exit "$rc"
}
trap cleanup EXIT

if [[ $SKIP_BUILD == 1 && -x $BIN ]]; then :
elif [[ -x $BIN && -z $(find "$ROOT/src" "$ROOT/pages" "$ROOT/Cargo.toml" "$ROOT/Cargo.lock" -newer "$BIN" -print -quit 2>/dev/null) ]]; then :
else
    say "cargo build --release"
    (cd "$ROOT" && cargo build --release --bin riegel) || die "build failed"
fi

mkdir -p "$WORK"/{www,ngx,data,keys,outbox,logs}
chmod 700 "$WORK/keys"
port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
wait_port() { for _ in $(seq 1 150); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.1; done; die "nothing on port $1"; }
PA=$(port); PR=$(port); PN=$(port)
head -c 1024 /dev/zero | tr '\0' 'x' >"$WORK/www/1k.html"
USER_LINE=""
[[ $EUID == 0 ]] && USER_LINE="user $(id -un) $(id -gn);"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 -subj /CN=127.0.0.1 \
    -addext subjectAltName=IP:127.0.0.1 -keyout "$WORK/keys/key.pem" -out "$WORK/cert.pem" 2>/dev/null
chmod 600 "$WORK/keys/key.pem"

ngx() { # NAME WORKERS SERVER-BLOCK
    cat >"$WORK/nginx-$1.conf" <<EOF
worker_processes $2;
daemon off;
$USER_LINE
pid $WORK/ngx/$1.pid;
error_log $WORK/logs/nginx-$1.log warn;
events { worker_connections 8192; }
http {
    access_log off;
    keepalive_requests 1000000;
    http2_max_requests 1000000;
    client_body_temp_path $WORK/ngx/$1-body;
    proxy_temp_path $WORK/ngx/$1-proxy;
    fastcgi_temp_path $WORK/ngx/$1-fastcgi;
    uwsgi_temp_path $WORK/ngx/$1-uwsgi;
    scgi_temp_path $WORK/ngx/$1-scgi;
    default_type text/html;
$3
}
EOF
    "$NGINX" -c "$WORK/nginx-$1.conf" -p "$WORK/ngx" -e "$WORK/logs/nginx-$1.log" &
    PIDS+=($!)
}
ngx upstream 1 "    server { listen 127.0.0.1:$PA; root $WORK/www; location / { } }"
ngx front auto "    upstream backend { server 127.0.0.1:$PA; keepalive 64; keepalive_requests 1000000; }
    server {
        listen 127.0.0.1:$PN ssl http2;
        ssl_certificate $WORK/cert.pem;
        ssl_certificate_key $WORK/keys/key.pem;
        location / { proxy_pass http://backend; proxy_http_version 1.1; proxy_set_header Connection \"\"; }
    }"

(umask 077 && openssl rand -hex 32 >"$WORK/keys/session.key" && openssl rand -hex 32 >"$WORK/keys/storage.key")
cat >"$WORK/riegel.yaml" <<EOF
listen: "127.0.0.1:$PR"
tls: { cert_file: "$WORK/cert.pem", key_file: "$WORK/keys/key.pem" }
public_url: "https://127.0.0.1:$PR"
upstream: { url: "http://127.0.0.1:$PA" }
store: { path: "$WORK/data" }
secrets: { session_key_file: "$WORK/keys/session.key", storage_key_file: "$WORK/keys/storage.key" }
mail: { from: "Bench <bench@example.invalid>", outbox: "$WORK/outbox" }
branding: { company: "Bench GmbH", language: en }
EOF
PW="bench-$(openssl rand -hex 12)"
printf '%s\n' "$PW" | "$BIN" user add bench --config "$WORK/riegel.yaml" --email b@example.invalid >"$WORK/logs/user-add.out" 2>&1 || die "user add"
"$BIN" serve --config "$WORK/riegel.yaml" >"$WORK/logs/riegel.log" 2>&1 &
PIDS+=($!)
wait_port "$PA"; wait_port "$PN"; wait_port "$PR"

say "logging in over HTTP/2"
RB=https://127.0.0.1:$PR
JAR=$WORK/jar
c() { curl -sS -k --http2 --max-time 10 -b "$JAR" -c "$JAR" "$@"; }
csrf_of() { grep -o '<input[^>]*name="csrf"[^>]*>' | head -n1 | sed -n 's/.*value="\([^"]*\)".*/\1/p'; }
csrf=$(c "$RB/_riegel/login" | csrf_of)
c -o /dev/null -H "Origin: $RB" --data-urlencode username=bench --data-urlencode "password=$PW" --data-urlencode "csrf=$csrf" "$RB/_riegel/login"
secret=$(c "$RB/_riegel/setup" | grep -o 'otpauth://[^"]*' | head -n1 | sed -n 's/.*[?&]secret=\([A-Za-z2-7=]*\).*/\1/p')
[[ -n $secret ]] || die "no secret on the setup page"
csrf=$(c "$RB/_riegel/setup/confirm" | csrf_of)
c -o /dev/null -H "Origin: $RB" --data-urlencode "code=$(oathtool --totp -b "$secret")" --data-urlencode "csrf=$csrf" "$RB/_riegel/setup/confirm"
SESSION=$(awk -F'\t' '$6 == "__Host-riegel_session" { v = $7 } END { print v }' "$JAR")
[[ -n $SESSION ]] || die "no session cookie"
COOKIE="cookie: __Host-riegel_session=$SESSION"
proto=$(curl -sk --http2 -o /dev/null -w '%{http_version} %{http_code}' -H "$COOKIE" "$RB/1k.html")
[[ $proto == "2 200" ]] || die "riegel: expected HTTP/2 200 for the portal file, got $proto"
proto=$(curl -sk --http2 -o /dev/null -w '%{http_version} %{http_code}' "https://127.0.0.1:$PN/1k.html")
[[ $proto == "2 200" ]] || die "nginx: expected HTTP/2 200, got $proto"

run() { # CASE URL H2LOAD-ARGS...
    local name=$1 url=$2 out
    shift 2
    out=$(nice -n 10 h2load -t"$THREADS" -c"$CONNS" -D"$DURATION" --warm-up-time=1 -H "$COOKIE" "$@" "$url" 2>&1) || true
    printf '%s\n' "$out" >>"$WORK/logs/$name.txt"
    local rps mean ok
    rps=$(sed -n 's/^finished in .*, \([0-9.]*\) req\/s.*/\1/p' <<<"$out")
    mean=$(awk '/^time for request:/ { print $6 }' <<<"$out")
    ok=$(sed -n 's/^status codes: \([0-9]*\) 2xx.*/\1/p' <<<"$out")
    printf '%s %s %s %s\n' "$name" "${rps:-0}" "${mean:-nan}" "${ok:-0}" >>"$WORK/results.txt"
    printf '    %-3s %10s req/s  mean %8s  2xx %s\n' "$name" "${rps:-0}" "${mean:-?}" "${ok:-0}" >&2
}
say "h2load: $ROUNDS rounds x 4 cases x ${DURATION}s, -t$THREADS -c$CONNS (-m$STREAMS on HTTP/2)"
for r in $(seq 1 "$ROUNDS"); do
    say "round $r"
    run R2 "$RB/1k.html" -m"$STREAMS"
    run N2 "https://127.0.0.1:$PN/1k.html" -m"$STREAMS"
    run R1 "$RB/1k.html" --h1
    run N1 "https://127.0.0.1:$PN/1k.html" --h1
done
median() { sort -g | awk '{ a[NR] = $1 } END { if (NR % 2) print a[(NR + 1) / 2]; else printf "%.1f\n", (a[NR / 2] + a[NR / 2 + 1]) / 2 }'; }
col() { awk -v n="$1" -v k="$2" '$1 == n { print $k }' "$WORK/results.txt" | median; }
{
    echo "| case | req/s (median of $ROUNDS) | ratio to nginx, same protocol | mean latency |"
    echo "|---|---:|---:|---:|"
    for p in 2 1; do
        rr=$(col R$p 2); nr=$(col N$p 2)
        label=$([[ $p == 2 ]] && echo "HTTP/2, -m$STREAMS" || echo "HTTP/1.1 over TLS")
        echo "| riegel, $label | $rr | $(awk -v a="$rr" -v b="$nr" 'BEGIN { printf "%.2f", a / b }') | $(awk -v n="R$p" '$1 == n { print $3 }' "$WORK/results.txt" | tr '\n' ' ') |"
        echo "| nginx proxy_pass, $label | $nr | 1.00 | $(awk -v n="N$p" '$1 == n { print $3 }' "$WORK/results.txt" | tr '\n' ' ') |"
    done
    echo
    echo "h2load -t$THREADS -c$CONNS -D$DURATION, $(nproc) CPUs, $(date -u +%Y-%m-%d); raw output in $WORK/logs"
} | tee "$WORK/results.md"
