#!/usr/bin/env bash
# The built wheel as a user gets it: installed into a fresh virtualenv in a temporary
# directory, and used from there, away from the source tree. A file the wheel lacks, or
# an import that works only from the source tree, fails here, where the test suite (run
# against the in-place build) cannot see it.
#
#   .ci/wheel_smoke.sh [WHEEL]    (default: the one dist/hamanet-*.whl; `make wheel-smoke`)
#
# PYTHON is the interpreter the virtualenv is made with (python3 by default; it must be
# one the wheel is for). Checks, in order: the wheel's contents (the extension module once,
# the type stubs and py.typed, every module of python/hamanet, no tests) and its platform
# tag (manylinux); the install (no index: hamanet has no runtime dependencies);
# `import hamanet` from the virtualenv, `hamanet.__version__` and `python -m hamanet
# --version` against the wheel's version; then the examples, copied out of the tree and
# run from the installed package, each bounded by `timeout` and checked byte for byte:
# the echo server (plain, and TLS when openssl is here to make a certificate), LyricsPoet
# and LyricsReader, the HTTP server (curl when installed, else urllib) and the UDP echo.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
python=${PYTHON:-python3}

fail() {
    echo "wheel_smoke: FAILED: $*" >&2
    exit 1
}

if [ $# -gt 0 ]; then
    wheel=$1
else
    shopt -s nullglob
    wheels=("$repo"/dist/hamanet-*.whl)
    shopt -u nullglob
    [ ${#wheels[@]} -eq 1 ] || fail "want one dist/hamanet-*.whl (make wheel), found ${#wheels[@]}"
    wheel=${wheels[0]}
fi
[ -f "$wheel" ] || fail "no wheel at $wheel"
wheel=$(cd "$(dirname "$wheel")" && pwd)/$(basename "$wheel")
echo "wheel_smoke: $(basename "$wheel")"

work=$(mktemp -d -t hamanet-wheel.XXXXXX)
pids=()
cleanup() {
    local pid
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

# --- the wheel's contents and tag, before anything is installed ---
# The modules the source tree has are the ones the wheel must have (git's list when this
# is a clone, so that a stray untracked file is not demanded).
if git -C "$repo" rev-parse --is-inside-work-tree >/dev/null 2>&1; then
    mapfile -t modules < <(git -C "$repo" ls-files 'python/hamanet/*.py')
else
    mapfile -t modules < <(cd "$repo" && ls python/hamanet/*.py)
fi
"$python" - "$wheel" "${modules[@]}" <<'EOF' || fail "the wheel's contents (above)"
import re
import sys
import zipfile

wheel, modules = sys.argv[1], sys.argv[2:]
names = zipfile.ZipFile(wheel).namelist()
problems = []
want = ["hamanet/_hamanet.pyi", "hamanet/py.typed"]
want += ["hamanet/" + m.rsplit("/", 1)[1] for m in modules]
problems += [f"missing {n}" for n in want if n not in names]
extensions = [n for n in names if re.fullmatch(r"hamanet/_hamanet\.[^/]*so", n)]
if len(extensions) != 1:
    problems.append(f"want one extension module, found {extensions}")
for n in names:
    top = n.split("/", 1)[0]
    base = n.rsplit("/", 1)[-1]
    if top not in ("hamanet",) and not top.endswith(".dist-info"):
        problems.append(f"outside the package: {n}")
    if base.startswith("test_") or base == "conftest.py" or "/tests/" in f"/{n}":
        problems.append(f"a test file: {n}")
    if base.endswith((".pyc", ".orig", ".rej", "~")) or "__pycache__" in n:
        problems.append(f"a stray file: {n}")
platform = wheel.rsplit("-", 1)[1].removesuffix(".whl")
if not platform.startswith("manylinux"):
    problems.append(f"platform tag {platform}: not manylinux (maturin's auditwheel check?)")
for p in problems:
    print(f"wheel_smoke: {p}", file=sys.stderr)
print(f"wheel_smoke: {len(names)} files, {extensions[0] if extensions else '?'}, tag {platform}")
sys.exit(1 if problems else 0)
EOF
# The glibc symbol versions the extension needs (the tag's reason), when binutils is here.
if command -v objdump >/dev/null; then
    "$python" -c 'import sys, zipfile; z = zipfile.ZipFile(sys.argv[1]); n = [m for m in z.namelist() if m.endswith(".so")][0]; open(sys.argv[2], "wb").write(z.read(n))' \
        "$wheel" "$work/ext.so"
    glibc=$(objdump -T "$work/ext.so" | grep -o 'GLIBC_[0-9.]*' | sort -uV | tail -n 1)
    echo "wheel_smoke: the newest glibc symbol version it needs: $glibc"
    rm -f "$work/ext.so"
fi

# --- install into a fresh virtualenv, and import from it, away from the source tree ---
"$python" -m venv "$work/venv"
py=$work/venv/bin/python
"$py" -m pip install --quiet --no-index --disable-pip-version-check "$wheel" \
    || fail "pip install of the wheel"
cd "$work"
unset PYTHONPATH PYTHONHOME PYTHONSTARTUP VIRTUAL_ENV
version=$(basename "$wheel" | cut -d- -f2)
timeout 30 "$py" - "$work/venv" "$version" <<'EOF' || fail "import hamanet from the virtualenv"
import os
import sys

import hamanet
import hamanet._hamanet
import hamanet.aio
import hamanet.framing

venv, version = os.path.realpath(sys.argv[1]), sys.argv[2]
for module in (hamanet, hamanet._hamanet, hamanet.aio):
    where = os.path.realpath(module.__file__)
    assert where.startswith(venv + os.sep), f"{module.__name__} comes from {where}, not {venv}"
assert hamanet.__version__ == version, f"__version__ {hamanet.__version__!r}, wheel {version!r}"
print(f"wheel_smoke: import hamanet {hamanet.__version__} from the virtualenv")
EOF
shown=$(timeout 30 "$py" -m hamanet --version) || fail "python -m hamanet --version"
case "$shown" in
    *"$version"*) echo "wheel_smoke: python -m hamanet --version: $shown" ;;
    *) fail "python -m hamanet --version said '$shown', the wheel is $version" ;;
esac

# --- the examples, from a copy, served by the installed package ---
cp -r "$repo/examples" "$work/examples"
find "$work/examples" -name __pycache__ -prune -exec rm -rf {} +

# serve NAME ARGV...: starts ARGV in the background (at most 120 s), waits for its
# "listening on ...:PORT" line and sets $port and $server (the pid).
serve() {
    local name=$1
    shift
    timeout 120 "$@" >"$work/$name.log" 2>&1 &
    server=$!
    pids+=("$server")
    port=
    for _ in $(seq 200); do
        port=$(sed -n 's|.*listening on .*:\([0-9][0-9]*\)/\{0,1\}\( .*\)\{0,1\}$|\1|p' "$work/$name.log" | head -n 1)
        [ -n "$port" ] && return 0
        kill -0 "$server" 2>/dev/null || break
        sleep 0.05
    done
    cat "$work/$name.log" >&2
    fail "$name did not start"
}

# stop NAME: SIGTERM to the last server, which must exit cleanly (status 0).
stop() {
    local status=0
    kill -TERM "$server"
    wait "$server" || status=$?
    if [ "$status" -ne 0 ]; then
        cat "$work/$1.log" >&2
        fail "$1 exited with status $status after SIGTERM"
    fi
}

# The echo server: 1 MiB of random bytes and a half-close; every byte must come back,
# then the server's close. With `tls`, the same over TLS, checking the certificate.
cat >"$work/echo_client.py" <<'EOF'
import os
import socket
import ssl
import sys

port, cafile = int(sys.argv[1]), (sys.argv[2] if len(sys.argv) > 2 else None)
payload = os.urandom(1 << 20)
sock = socket.create_connection(("127.0.0.1", port), timeout=20)
if cafile:
    sock = ssl.create_default_context(cafile=cafile).wrap_socket(sock, server_hostname="localhost")
sock.sendall(payload)
if cafile:
    got = b""
    while len(got) < len(payload):
        chunk = sock.recv(1 << 16)
        assert chunk, f"closed after {len(got)} bytes"
        got += chunk
else:
    sock.shutdown(socket.SHUT_WR)
    got = b"".join(iter(lambda: sock.recv(1 << 16), b""))
assert got == payload, f"echoed {len(got)} bytes, not the {len(payload)} sent"
sock.close()
print(f"wheel_smoke: echo{' (TLS)' if cafile else ''}: {len(got)} bytes back, all of them")
EOF
serve echo "$py" examples/echo_server.py 0
timeout 30 "$py" "$work/echo_client.py" "$port" || fail "the echo round trip"
stop echo

if command -v openssl >/dev/null; then
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 1 \
        -subj /CN=localhost -addext subjectAltName=DNS:localhost \
        -keyout "$work/key.pem" -out "$work/cert.pem" 2>/dev/null
    serve echo-tls "$py" examples/echo_server.py 0 --tls "$work/cert.pem" "$work/key.pem"
    timeout 30 "$py" "$work/echo_client.py" "$port" "$work/cert.pem" || fail "the TLS echo"
    stop echo-tls
else
    echo "wheel_smoke: no openssl here to make a certificate: the TLS echo is left out"
fi

# LyricsPoet and LyricsReader (what `make demo` runs): 4 asks for 3 greetings, then the
# poet closes the session.
serve poet "$py" examples/lyrics_poet.py 0
timeout 30 "$py" examples/lyrics_reader.py 4 "$port" >"$work/reader.log" 2>&1 \
    || { cat "$work/reader.log" >&2; fail "lyrics_reader"; }
greetings=$(grep -c '^Hello client !!$' "$work/reader.log" || true)
if [ "$greetings" -ne 3 ] || ! grep -q 'server closed the session (cleanly)' "$work/reader.log"; then
    cat "$work/reader.log" >&2
    fail "lyrics_reader: want 3 greetings and a clean close, got $greetings greetings"
fi
echo "wheel_smoke: lyrics: 3 greetings, then a clean close"
kill -TERM "$server"
wait "$server" || true # the poet stops on Ctrl-C only; SIGTERM ends it as it is

# The HTTP server: GET / is "Hello, World!", over curl when it is here.
serve http "$py" examples/http_server.py 0
if command -v curl >/dev/null; then
    body=$(timeout 30 curl -sS --fail --max-time 20 "http://127.0.0.1:$port/") || fail "curl GET /"
    client=curl
else
    body=$(timeout 30 "$py" -c 'import sys, urllib.request; print(urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[1]}/", timeout=20).read().decode(), end="")' "$port") \
        || fail "urllib GET /"
    client=urllib
fi
[ "$body" = "Hello, World!" ] || fail "GET / answered '$body', not 'Hello, World!'"
echo "wheel_smoke: http: GET / (${client}): $body"
stop http

# The UDP echo: datagrams of several sizes, each must come back whole.
serve udp "$py" examples/udp_echo.py 0
timeout 30 "$py" - "$port" <<'EOF' || fail "the UDP echo"
import os
import socket
import sys

sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
sock.settimeout(5)
sock.connect(("127.0.0.1", int(sys.argv[1])))
for size in (1, 64, 1400, 8192):
    payload = os.urandom(size)
    for _ in range(5):  # UDP may lose one, even on loopback: try again
        sock.send(payload)
        try:
            got = sock.recv(65536)
            break
        except socket.timeout:
            continue
    else:
        raise SystemExit(f"no echo of a {size}-byte datagram")
    assert got == payload, f"a {size}-byte datagram came back as {len(got)} other bytes"
print("wheel_smoke: udp: 4 datagrams (1 to 8192 bytes) back whole")
EOF
stop udp

echo "wheel_smoke: ok"
