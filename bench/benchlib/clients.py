"""The real-client scenarios: redis-benchmark against the Redis-protocol servers and wrk
against the HTTP servers, each pinned to the load core like the load generator.

What fails a run: redis-benchmark exits non-zero on an error reply or a dropped
connection, and every one of its tests must report a rate; wrk must report no non-2xx/3xx
response and no socket error (connect, read, write, timeout). After the load, one request
of our own checks the server still answers correctly (redis: the key redis-benchmark SET
holds a 3-byte value; http: `GET /` is a 200 with its whole body).

The server's CPU time is utime + stime (every thread) from /proc/PID/stat, read just
before the client starts and just after it exits, divided by the requests completed.
Before it, the warm-up pass (`Timing.warm_pass`, as for the load generator's scenarios):
a redis-benchmark SET/GET run, or a wrk run of the same shape, whose connections close
before the measured run's open.

Over TLS (`redis-tls`, `https`) the clients offer one configuration only (benchlib/tls.py:
OPENSSL_CONF in their environment); redis-benchmark verifies the certificate against the
run's CA, wrk verifies nothing (as a browser-less load tool; the plain run checks nothing
either), and our own check afterwards verifies it.
"""

from __future__ import annotations

import csv
import http.client
import os
import re
import socket
import statistics
import subprocess
import time

from benchlib.catalog import REDIS_REQUESTS_PER_SECOND, Scenario
from benchlib.process import CLK_TCK, RunError, RunResult, ServerProcess, Timing
from benchlib.tls import CIPHER_SUITE, SERVER_NAME, TlsFiles

REDIS_TESTS = ("PING_INLINE", "PING_MBULK", "SET", "GET")
CHECK_TIMEOUT = 5.0


def cpu_ticks(pid: int) -> int:
    """utime + stime of every thread of `pid`, in clock ticks."""
    with open(f"/proc/{pid}/stat") as f:
        stat = f.read()
    fields = stat[stat.rindex(")") + 2 :].split()  # fields 3.. (the name may hold spaces)
    return int(fields[11]) + int(fields[12])


def run_client(
    argv: list[str], cpu: int, timeout: float, tls: TlsFiles | None = None
) -> subprocess.CompletedProcess:
    """Runs a client pinned to `cpu`; with `tls`, OpenSSL in it offers only our TLS."""
    env = {**os.environ, **tls.client_env()} if tls is not None else None
    try:
        return subprocess.run(
            ["taskset", "-c", str(cpu), *argv],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
            env=env,
        )
    except subprocess.TimeoutExpired as e:
        raise RunError(f"{argv[0]} did not finish in {timeout:.0f} s") from e


def _tail(text: str, lines: int = 5) -> str:
    kept = [line.strip() for line in text.replace("\r", "\n").splitlines() if line.strip()]
    return " | ".join(kept[-lines:]) or "no output"


# -- redis-benchmark ----------------------------------------------------------------------
def redis_argv(
    port: int, scenario: Scenario, tests: str, requests: int, tls: TlsFiles | None = None
) -> list[str]:
    secure = []
    if tls is not None:
        secure = ["--tls", "--cacert", str(tls.ca), "--sni", SERVER_NAME]
        secure += ["--tls-ciphersuites", CIPHER_SUITE]
    return [
        "redis-benchmark",
        *secure,
        "-h",
        "127.0.0.1",
        "-p",
        str(port),
        "-c",
        str(scenario.conns),
        "-P",
        str(scenario.depth),
        "-t",
        tests,
        "-n",
        str(requests),
        "--csv",
    ]


def parse_redis_csv(out: str) -> dict[str, dict[str, float]]:
    """redis-benchmark --csv: a header line, then one line per test."""
    rows = list(csv.reader(line for line in out.splitlines() if line.startswith('"')))
    if not rows or rows[0][:2] != ["test", "rps"]:
        return {}
    header = rows[0]
    parsed = {}
    for row in rows[1:]:
        try:
            parsed[row[0]] = {k: float(v) for k, v in zip(header[1:], row[1:])}
        except ValueError:
            continue
    return parsed


def measure_redis(
    srv: ServerProcess,
    scenario: Scenario,
    timing: Timing,
    cpu: int,
    res: RunResult,
    tls: TlsFiles | None = None,
) -> None:
    tls = tls if scenario.tls else None
    timeout = 60 + 20 * (timing.warm_pass + timing.duration)
    # The warm-up pass: a SET/GET run sized like the measured one, with its connections
    # closed before the measured run opens its own.
    if timing.warm_pass > 0:
        warm = max(1000, int(timing.warm_pass * REDIS_REQUESTS_PER_SECOND))
        argv = redis_argv(srv.port, scenario, "set,get", warm, tls)
        proc = run_client(argv, cpu, timeout, tls)
        if proc.returncode != 0:
            raise RunError(
                f"redis-benchmark warm-up pass failed: {_tail(proc.stdout + proc.stderr)}"
            )
    requests = max(1000, int(timing.duration * REDIS_REQUESTS_PER_SECOND))
    argv = redis_argv(srv.port, scenario, "ping,set,get", requests, tls)
    before, started = cpu_ticks(srv.pid), time.monotonic()
    proc = run_client(argv, cpu, timeout, tls)
    ticks, seconds = cpu_ticks(srv.pid) - before, time.monotonic() - started
    if proc.returncode != 0:
        raise RunError(
            f"redis-benchmark failed (exit {proc.returncode}): {_tail(proc.stdout + proc.stderr)}"
        )
    res.client_output = [line for line in proc.stderr.splitlines() if line.strip()]
    tests = parse_redis_csv(proc.stdout)
    missing = [t for t in REDIS_TESTS if tests.get(t, {}).get("rps", 0) <= 0]
    if missing:
        raise RunError(f"redis-benchmark reported no rate for {', '.join(missing)}")
    res.tests = {t: tests[t]["rps"] for t in REDIS_TESTS}
    res.messages = requests * len(REDIS_TESTS)
    res.seconds = seconds
    res.msgs_per_s = statistics.mean(res.tests.values())
    res.p50_us = statistics.median(tests[t]["p50_latency_ms"] for t in REDIS_TESTS) * 1000
    res.p99_us = statistics.median(tests[t]["p99_latency_ms"] for t in REDIS_TESTS) * 1000
    res.cpu_us_per_msg = ticks / CLK_TCK * 1e6 / res.messages
    check_redis(srv.port, tls)


def _connect(port: int, tls: TlsFiles | None) -> socket.socket:
    """A connection for a check of our own: over TLS, verifying the certificate."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=CHECK_TIMEOUT)
    if tls is None:
        return sock
    try:
        return tls.client_context().wrap_socket(sock, server_hostname=SERVER_NAME)
    except BaseException:
        sock.close()
        raise


def check_redis(port: int, tls: TlsFiles | None = None) -> None:
    """The SETs were stored: redis-benchmark's key (no -r) holds its 3-byte value."""
    request = b"*2\r\n$3\r\nGET\r\n$16\r\nkey:__rand_int__\r\n*1\r\n$4\r\nPING\r\n"
    want = len(b"$3\r\nxxx\r\n+PONG\r\n")
    reply = b""
    try:
        with _connect(port, tls) as s:
            s.sendall(request)
            while len(reply) < want:
                chunk = s.recv(4096)
                if not chunk:
                    break
                reply += chunk
    except OSError as e:
        raise RunError(f"the check after the run failed: {e}") from e
    if not re.fullmatch(rb"\$3\r\n[^\r\n]{3}\r\n\+PONG\r\n", reply):
        raise RunError(f"the check after the run got {reply[:80]!r} for GET key:__rand_int__")


# -- wrk ----------------------------------------------------------------------------------
_UNITS_US = {"us": 1.0, "ms": 1e3, "s": 1e6, "m": 60e6, "h": 3600e6}


def _latency_us(text: str, percentile: str) -> float:
    m = re.search(rf"^\s*{percentile}%\s+([\d.]+)(us|ms|s|m|h)\s*$", text, re.M)
    return float(m.group(1)) * _UNITS_US[m.group(2)] if m else 0.0


def parse_wrk(out: str) -> dict[str, float]:
    """The figures of a `wrk --latency` report; raises RunError on errors it reports."""
    done = re.search(r"^\s*(\d+) requests in ([\d.]+)(us|ms|s|m|h)", out, re.M)
    rate = re.search(r"^Requests/sec:\s+([\d.]+)", out, re.M)
    if not done or not rate:
        raise RunError(f"wrk printed no result: {_tail(out)}")
    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    if non2xx and int(non2xx.group(1)):
        raise RunError(f"wrk: {non2xx.group(1)} non-2xx/3xx responses")
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    if errors and any(int(n) for n in errors.groups()):
        raise RunError(f"wrk: {errors.group(0)}")
    return {
        "requests": float(done.group(1)),
        "seconds": float(done.group(2)) * _UNITS_US[done.group(3)] / 1e6,
        "rps": float(rate.group(1)),
        "p50_us": _latency_us(out, "50"),
        "p99_us": _latency_us(out, "99"),
    }


def wrk_argv(port: int, scenario: Scenario, seconds: int) -> list[str]:
    url = f"{'https' if scenario.tls else 'http'}://127.0.0.1:{port}/"
    return ["wrk", "-t1", f"-c{scenario.conns}", f"-d{seconds}s", "--latency", url]


def measure_wrk(
    srv: ServerProcess,
    scenario: Scenario,
    timing: Timing,
    cpu: int,
    res: RunResult,
    tls: TlsFiles | None = None,
) -> None:
    tls = tls if scenario.tls else None
    # wrk takes whole seconds and has no warm-up of its own: the connects are part of the
    # run. The warm-up pass is a wrk run of the same shape, at least a second long.
    if timing.warm_pass > 0:
        warm = wrk_argv(srv.port, scenario, max(1, round(timing.warm_pass)))
        proc = run_client(warm, cpu, timeout=60 + timing.warm_pass, tls=tls)
        if proc.returncode != 0:
            raise RunError(f"wrk warm-up pass failed: {_tail(proc.stdout + proc.stderr)}")
        parse_wrk(proc.stdout)  # its errors fail the run too
    seconds = max(1, round(timing.duration))
    before = cpu_ticks(srv.pid)
    argv = wrk_argv(srv.port, scenario, seconds)
    proc = run_client(argv, cpu, timeout=seconds + 60, tls=tls)
    ticks = cpu_ticks(srv.pid) - before
    if proc.returncode != 0:
        raise RunError(f"wrk failed (exit {proc.returncode}): {_tail(proc.stdout + proc.stderr)}")
    figures = parse_wrk(proc.stdout)
    res.client_output = [line for line in proc.stderr.splitlines() if line.strip()]
    res.messages = int(figures["requests"])
    if res.messages == 0:
        raise RunError("wrk completed no request")
    res.seconds = figures["seconds"]
    res.msgs_per_s = figures["rps"]
    res.p50_us = figures["p50_us"]
    res.p99_us = figures["p99_us"]
    res.cpu_us_per_msg = ticks / CLK_TCK * 1e6 / res.messages
    check_http(srv.port, tls)


def check_http(port: int, tls: TlsFiles | None = None) -> None:
    """`GET /` still gets a 200 with its whole body (http.client checks Content-Length)."""
    conn: http.client.HTTPConnection
    if tls is None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=CHECK_TIMEOUT)
    else:
        # The certificate names 127.0.0.1 too, so it is verified against the address.
        conn = http.client.HTTPSConnection(
            "127.0.0.1", port, timeout=CHECK_TIMEOUT, context=tls.client_context()
        )
    try:
        conn.request("GET", "/")
        response = conn.getresponse()
        body = response.read()
    except (OSError, http.client.HTTPException) as e:
        raise RunError(f"the check after the run failed: {e!r}") from e
    finally:
        conn.close()
    if response.status != 200 or not body:
        raise RunError(f"the check after the run got {response.status} {body[:80]!r}")


DRIVERS = {"redis-benchmark": measure_redis, "wrk": measure_wrk}
