#!/usr/bin/env bash
# Instructions per authenticated GET, counted by valgrind (callgrind): a
# figure that does not depend on what else the machine is doing, for
# comparing two builds on a busy machine where wrk's req/s is noise.
#
#   bash benches/instructions.sh BIN [BIN ...]      # e.g. an old and a new build
#   N1=300 N2=1300 bash benches/instructions.sh target/release/riegel
#
# For each binary: riegel serve (sled, a fresh directory) under callgrind in
# front of a small keep-alive portal (python3), one login with TOTP
# enrolment through the real pages (curl, oathtool), then N keep-alive GETs
# of a portal page with the session cookie (python3 http.client); SIGTERM,
# and callgrind's total. Run twice, with N1 and N2 requests: the difference
# divided by N2 - N1 is the cost of one request (start, login and shutdown
# cancel out). Each binary needs only the config keys of the first round.
set -euo pipefail
N1=${N1:-300}
N2=${N2:-1300}
[[ $# -ge 1 ]] || { echo "usage: $0 BIN [BIN ...]" >&2; exit 2; }
for t in valgrind python3 curl oathtool openssl; do
    command -v "$t" >/dev/null || { echo "needs $t" >&2; exit 2; }
done
WORK=$(mktemp -d "${TMPDIR:-/tmp}/riegel-ir.XXXXXX")
free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

# The portal: 1 KiB answers on kept-alive connections.
PA=$(free_port)
python3 - "$PA" >"$WORK/portal.log" 2>&1 <<'EOF' &
import sys, http.server, socketserver
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_GET(self):
        body = b"x" * 1024
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a):
        pass
class S(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True
S(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
EOF
PORTAL=$!
trap 'kill $PORTAL 2>/dev/null || true' EXIT

# One run: prints the instructions riegel executed in all.
run() {
    local bin=$1 n=$2 dir port
    dir=$(mktemp -d "$WORK/run.XXXXXX")
    port=$(free_port)
    (umask 077 && openssl rand -hex 32 >"$dir/session.key" && openssl rand -hex 32 >"$dir/storage.key")
    cat >"$dir/riegel.yaml" <<EOF
listen: "127.0.0.1:$port"
public_url: "http://127.0.0.1:$port"
upstream: { url: "http://127.0.0.1:$PA" }
store: { path: "$dir/data" }
secrets: { session_key_file: "$dir/session.key", storage_key_file: "$dir/storage.key" }
mail: { from: "B <b@example.invalid>", outbox: "$dir/outbox" }
branding: { company: "Bench GmbH", portal_name: "Portal", language: en }
totp: { issuer: "Bench" }
EOF
    echo "bench-password-$n" | "$bin" user add bench --config "$dir/riegel.yaml" --email b@example.invalid >/dev/null
    valgrind --tool=callgrind --callgrind-out-file="$dir/callgrind.out" \
        "$bin" serve --config "$dir/riegel.yaml" >"$dir/riegel.log" 2>"$dir/valgrind.log" &
    local pid=$!
    for _ in $(seq 1 600); do
        curl -s -o /dev/null "http://127.0.0.1:$port/_riegel/healthz" && break
        sleep 0.1
    done
    local base="http://127.0.0.1:$port" jar="$dir/jar" page csrf secret
    c() { curl -sS --max-time 120 -b "$jar" -c "$jar" "$@"; }
    csrf() { sed -n 's/.*name="csrf" value="\([^"]*\)".*/\1/p' | head -n1; }
    csrf=$(c "$base/_riegel/login" | csrf)
    c -o /dev/null -H "Origin: $base" --data-urlencode username=bench --data-urlencode "password=bench-password-$n" \
        --data-urlencode "csrf=$csrf" "$base/_riegel/login"
    secret=$(c "$base/_riegel/setup" | grep -o 'secret=[A-Z2-7]*' | head -n1 | cut -d= -f2)
    csrf=$(c "$base/_riegel/setup/confirm" | csrf)
    c -o /dev/null -H "Origin: $base" --data-urlencode "code=$(oathtool --totp -b "$secret")" \
        --data-urlencode "csrf=$csrf" "$base/_riegel/setup/confirm"
    local session
    session=$(awk -F'\t' '$6 == "riegel_session" { v = $7 } END { print v }' "$jar")
    [[ -n $session ]] || { echo "no session for $bin (see $dir)" >&2; exit 1; }
    python3 - "$port" "$session" "$n" <<'EOF'
import sys, http.client
port, session, n = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
c = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
for i in range(n):
    c.request("GET", "/mieter/dokumente", headers={"Cookie": "riegel_session=" + session, "User-Agent": "bench"})
    r = c.getresponse()
    body = r.read()
    if r.status != 200 or len(body) != 1024:
        sys.exit(f"request {i}: {r.status} {len(body)} bytes")
EOF
    kill -TERM "$pid"
    wait "$pid" || true
    sed -n 's/.*Collected : *\([0-9]*\).*/\1/p' "$dir/valgrind.log"
}

printf '| binary | Ir with %s GETs | Ir with %s GETs | instructions per GET |\n|---|---:|---:|---:|\n' "$N1" "$N2"
for bin in "$@"; do
    a=$(run "$bin" "$N1")
    b=$(run "$bin" "$N2")
    printf '| %s | %s | %s | %s |\n' "$bin" "$a" "$b" "$(( (b - a) / (N2 - N1) ))"
done
rm -rf "$WORK"
