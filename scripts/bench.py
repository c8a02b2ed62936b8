#!/usr/bin/env python3
"""`make bench`: load authd (release build, BCRYPT_COST=12) with wrk on this machine and print
a table. Usage: bench.py PG_PORT [--sweep] [--quick] [--wire-only]

--wire-only runs just the HTTP-layer figures (idle keep-alive connections, slowloris, 16 MiB
header lines); with AUTHD_BIN=<another authd> they measure another build the same way.

Every wrk run is checked from the kernel's side: midway through, each of the server's
established connections must have sent bytes (`ss -ti`, bytes_acked). A run where one did not
is marked INVALID (tiny_http can leave keep-alive connections unserved while wrk reports no
error), and the bench exits 1.
"""
import atexit
import json
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# AUTHD_BIN: another build to measure with the same bench (the "before" of a change).
BIN = os.environ.get("AUTHD_BIN") or os.path.join(ROOT, "target", "release", "authd")
BARE = os.path.join(ROOT, "target", "bare", "release", "bare")
CORES = os.cpu_count() or 1
QUICK = "--quick" in sys.argv
DUR = 3 if QUICK else 6
# authd and the bare stack in turn at 64 connections: short rounds, many of them, each pair
# in alternating order (authd first, then the bare stack first), so that a shared VM's
# drift falls on both alike. One round's ratio spreads over about 0.7-1.1 here, at 1, 3 or
# 6 s alike, so only the number of rounds narrows the median (see BENCHMARKS.md).
BARE_ROUNDS = 1 if QUICK else 21
ROUND_SECS = DUR if QUICK else 2
BESIDE_SECS = max(DUR // 2, 3)  # each GET /api/user/ run beside a login flood or busy loops
PG_PORT = sys.argv[1]
PASSWORD = "Password123"
SECRET = secrets.token_urlsafe(48)  # one key for every server of the run: the cookie stays valid
invalid = []


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def psql(db, sql):
    subprocess.run(
        ["psql", "-q", "-v", "ON_ERROR_STOP=1", "-h", "127.0.0.1", "-p", PG_PORT, "-U", "postgres", "-d", db, "-c", sql],
        check=True, stdout=subprocess.DEVNULL)


def commits(db):
    """Transactions committed in `db` so far (each autocommit statement is one round trip)."""
    time.sleep(1.2)  # backends publish their counts at most once a second
    out = subprocess.run(
        ["psql", "-tA", "-h", "127.0.0.1", "-p", PG_PORT, "-U", "postgres", "-d", db, "-c",
         f"SELECT xact_commit FROM pg_stat_database WHERE datname = '{db}'"],
        check=True, capture_output=True, text=True).stdout
    return int(out.strip())


def round_trips(db, port, path, cookie=None):
    """Database transactions per request, over a short wrk run."""
    before = commits(db)
    r = wrk(port, path, 16, secs=2, cookie=cookie, label=f"round trips {path}")
    after = commits(db) - 1  # the first commits() query itself
    return (after - before) / max(r["requests"], 1)


def http(port, method, path, body=None, cookie=None):
    """One request on its own connection: (status, headers text, body)."""
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    data = body.encode() if body else b""
    head = f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
    if body is not None:
        head += f"Content-Type: application/json\r\nContent-Length: {len(data)}\r\n"
    if cookie:
        head += f"Cookie: {cookie}\r\n"
    s.sendall(head.encode() + b"\r\n" + data)
    out = b""
    while chunk := s.recv(65536):
        out += chunk
    s.close()
    text = out.decode(errors="replace")
    head, _, rest = text.partition("\r\n\r\n")
    return int(head.split()[1]), head, rest


class Authd:
    def __init__(self, db, extra=None):
        self.port = free_port()
        env = {
            "PATH": os.environ.get("PATH", ""),
            "DATABASE_URL": f"postgres://postgres@127.0.0.1:{PG_PORT}/{db}",
            "SECRET_KEY": SECRET,
            "BIND": f"127.0.0.1:{self.port}",
            "BCRYPT_COST": "12",
            "RUST_LOG": "warn",
            # the bench's own clients all come from 127.0.0.1
            "LOGIN_MAX_FAILURES_PER_IP": "1000000",
            "REGISTER_MAX_PER_IP": "1000000",
        }
        env.update(extra or {})
        t0 = time.perf_counter()
        self.log = tempfile.TemporaryFile()
        # In a session of its own, as a service runs (autogroup then gives it its own group).
        self.proc = subprocess.Popen([BIN], env=env, stdout=subprocess.DEVNULL, stderr=self.log,
                                     start_new_session=True)
        # Never left running behind a bench that fails halfway.
        atexit.register(lambda p=self.proc: p.poll() is None and p.kill())
        while True:
            try:
                if http(self.port, "GET", "/healthz")[0] == 200:
                    break
            except OSError:
                pass
            if self.proc.poll() is not None:
                self.log.seek(0)
                sys.exit(f"bench: authd exited with {self.proc.returncode}: {self.log.read()[-2000:].decode()}")
            if time.perf_counter() - t0 > 30:
                sys.exit("bench: authd did not answer /healthz within 30 s")
            time.sleep(0.0005)
        self.startup_ms = (time.perf_counter() - t0) * 1000

    def vm(self, field):
        with open(f"/proc/{self.proc.pid}/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024  # MiB
        return 0.0

    def stop(self):
        self.proc.terminate()
        self.proc.wait(timeout=15)


def cpu_seconds(pid):
    """User + system CPU time the process has used so far."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def connections(port):
    """The server's established connections: {peer address: bytes it has sent there}."""
    out = subprocess.run(["ss", "-tinH", "state", "established", f"( sport = :{port} )"],
                         capture_output=True, text=True).stdout
    conns = {}
    for c in re.split(r"\n(?=\S)", out.strip()) if out.strip() else []:
        addrs = re.findall(r"\S+:\d+", c)
        acked = re.search(r"bytes_acked:(\d+)", c)
        if len(addrs) >= 2:
            conns[addrs[1]] = int(acked[1]) if acked else 0
    return conns


def wrk(port, path, conns, secs=DUR, script=None, cookie=None, label="", sample_at=0.6, pid=None):
    """Runs wrk; returns dict(rps, p50, p99, requests, errors, ok)."""
    threads = min(conns, 2)
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as f:
        f.write(script or "")
        f.write(REPORT)
        lua = f.name
    cmd = ["wrk", f"-t{threads}", f"-c{conns}", f"-d{secs}s", "--latency", "--timeout", "10s", "-s", lua]
    if cookie:
        cmd += ["-H", f"Cookie: {cookie}"]
    cmd.append(f"http://127.0.0.1:{port}{path}")
    before = set(connections(port))  # another wrk's, running alongside (the login flood)
    cpu0 = cpu_seconds(pid) if pid else 0
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    time.sleep(secs * sample_at)
    mine = {peer: sent for peer, sent in connections(port).items() if peer not in before}
    established, silent = len(mine), sum(1 for sent in mine.values() if sent == 0)
    out = proc.communicate()[0]
    os.unlink(lua)
    m = re.search(r"^JSON (.*)$", out, re.M)
    if not m:
        sys.exit(f"bench: wrk failed:\n{out}")
    r = json.loads(m.group(1))
    if pid:
        r["cpu_us"] = (cpu_seconds(pid) - cpu0) * 1e6 / max(r["requests"], 1)
    r["ok"] = established == conns and silent == 0
    if not r["ok"]:
        invalid.append(f"{label}: {established} of {conns} connections established, {silent} never answered")
    return r


# wrk's summary as one JSON line: latencies in microseconds, non-2xx and socket errors.
REPORT = r"""
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'JSON {"rps": %.1f, "requests": %d, "p50": %.3f, "p99": %.3f, "mean": %.3f, "non2xx": %d, "errors": %d}\n',
    summary.requests / (summary.duration / 1e6), summary.requests,
    latency:percentile(50) / 1000, latency:percentile(99) / 1000, latency.mean / 1000,
    e.status, e.connect + e.read + e.write + e.timeout))
end
"""

LOGIN = """
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = '{"email":"bench@example.com","password":"%s"}'
""" % PASSWORD

REGISTER = """
local threads = 0
setup = function(thread)
  threads = threads + 1
  thread:set("tid", threads)
end
local n = 0
request = function()
  n = n + 1
  return wrk.format("POST", "/api/register/", {["Content-Type"] = "application/json"},
    string.format('{"name":"Bench","email":"r%d-%d-%d@example.com","password":"Password123"}', tid, os.time(), n))
end
"""


def fmt_row(cells, widths):
    return "| " + " | ".join(str(c).ljust(w) for c, w in zip(cells, widths)) + " |"


def table(header, rows):
    widths = [max(len(str(r[i])) for r in [header] + rows) for i in range(len(header))]
    lines = [fmt_row(header, widths), "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    lines += [fmt_row(r, widths) for r in rows]
    return "\n".join(lines)


def latency_row(label, r):
    """A table row: label, req/s (marked when invalid), p50, p99."""
    return [label, f"{r['rps']:,.0f} req/s{mark(r)}", f"{r['p50']:.2f} ms", f"{r['p99']:.2f} ms"]


def mark(r):
    return "" if r["ok"] and r["errors"] == 0 and r["non2xx"] == 0 else " INVALID"


class Bare:
    """The same crates in a bare loop (bench/bare), on the same database and cookie."""

    def __init__(self, db, cookie):
        self.port = free_port()
        env = {"PATH": os.environ.get("PATH", ""), "SECRET_KEY": SECRET,
               "DATABASE_URL": f"postgres://postgres@127.0.0.1:{PG_PORT}/{db}"}
        self.proc = subprocess.Popen([BARE, f"127.0.0.1:{self.port}"], env=env, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL, start_new_session=True)
        atexit.register(lambda p=self.proc: p.poll() is None and p.kill())
        for _ in range(300):
            try:
                if http(self.port, "GET", "/", cookie=cookie)[0] == 200:
                    return
            except OSError:
                time.sleep(0.01)
        self.stop()
        sys.exit("bench: the bare stack did not answer")

    def stop(self):
        self.proc.terminate()
        self.proc.wait(timeout=10)


def median_run(runs):
    """The run with the median req/s (of an odd number of runs)."""
    return sorted(runs, key=lambda r: r["rps"])[len(runs) // 2]


def autogroup():
    """The kernel's session autogrouping (1: CPU is shared between sessions before nice
    values count, which changes the tails under a login flood; see BENCHMARKS.md)."""
    try:
        with open("/proc/sys/kernel/sched_autogroup_enabled") as f:
            return f.read().strip()
    except OSError:
        return "n/a"


def autogroup_writable():
    return os.access("/proc/sys/kernel/sched_autogroup_enabled", os.W_OK)


def set_autogroup(value):
    """Sets kernel.sched_autogroup_enabled (a no-op when it already has `value`)."""
    if autogroup() != value:
        with open("/proc/sys/kernel/sched_autogroup_enabled", "w") as f:
            f.write(value)


def user_beside(port, cookie, what, prefix=""):
    """GET /api/user/ at 16 and 64 connections, BESIDE_SECS each, while `what` runs: rows."""
    rows = []
    for c in (16, 64):
        r = wrk(port, "/api/user/", c, secs=BESIDE_SECS, cookie=cookie, label=f"user c={c}, {what}")
        rows.append(latency_row(f"{prefix}GET /api/user/, {c} conn, {what}", r))
    return rows


def login_flood(port, cookie, label):
    """GET /api/user/ at 16 and 64 connections while 16 other clients flood the login: rows
    for the table. The flood's own connections are checked after the user runs beside it
    have ended."""
    flood_secs = 2 + 2 * BESIDE_SECS + 4
    flood = {}
    t = threading.Thread(target=lambda: flood.update(wrk(
        port, "/api/login/", 16, secs=flood_secs, script=LOGIN, label=f"login flood, {label}",
        sample_at=(flood_secs - 2) / flood_secs)))
    t.start()
    try:
        time.sleep(2)
        rows = user_beside(port, cookie, "during a login flood, " + label)
    finally:
        t.join()
    time.sleep(4)  # let the queued logins finish before the next figures
    rows.append([f"(the flood itself, {label})", f"{flood['rps']:.1f} logins/s{mark(flood)}", "", ""])
    return rows


def fill_users(db, total):
    """Grows accounts_user to `total` rows (dummy hashes: these users never log in)."""
    psql(db, f"""INSERT INTO accounts_user (password, is_superuser, first_name, last_name, is_staff,
        is_active, date_joined, name, email)
        SELECT '!bench', false, '', '', false, true, now(), 'Filler ' || g, 'filler' || g || '@example.com'
        FROM generate_series((SELECT count(*) FROM accounts_user) + 1, {total}) g; ANALYZE accounts_user""")


def threads_of(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("Threads:"):
                return int(line.split()[1])
    return 0


def idle_connections(n=5000, secs=10):
    """n keep-alive connections, each served once and then idle: authd's CPU over `secs`,
    its RSS and threads. Goal: < 1% of a core."""
    import resource
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    srv = Authd(DB, {"KEEPALIVE_TIMEOUT": "120", "READ_TIMEOUT": "60", "MAX_CONNECTIONS": str(n + 100)})
    rss0, threads0 = srv.vm("VmRSS"), threads_of(srv.proc.pid)
    socks = []
    req = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
    try:
        for _ in range(n):
            s = socket.create_connection(("127.0.0.1", srv.port), timeout=10)
            s.sendall(req)
            socks.append(s)
        answered = 0
        for s in socks:
            try:
                if s.recv(4096).startswith(b"HTTP/1.1 200"):
                    answered += 1
            except OSError:
                pass
        time.sleep(2)
        cpu0, t0 = cpu_seconds(srv.proc.pid), time.perf_counter()
        time.sleep(secs)
        cpu = (cpu_seconds(srv.proc.pid) - cpu0) / (time.perf_counter() - t0)
        rss, threads = srv.vm("VmRSS"), threads_of(srv.proc.pid)
        alive = 0
        for s in socks:
            s.setblocking(False)
            try:
                alive += 1 if s.recv(1) else 0
            except BlockingIOError:
                alive += 1
            except OSError:
                pass
    finally:
        for s in socks:
            s.close()
        srv.stop()
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    return [f"{n} idle keep-alive connections ({answered} answered, {alive} still open)",
            f"{100 * cpu:.2f}% of a core", f"RSS {rss0:.1f} -> {rss:.1f} MiB", f"threads {threads0} -> {threads}"]


def slowloris(read_timeout=2.0, clients=5):
    """Heads sent one byte per (READ_TIMEOUT - 0.5 s): when each is cut off, from its first
    byte. Goal: READ_TIMEOUT +- 0.2 s."""
    srv = Authd(DB, {"READ_TIMEOUT": str(int(read_timeout))})
    head = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: " + b"a" * 100
    cut = []

    def one():
        s = socket.create_connection(("127.0.0.1", srv.port), timeout=30)
        t0 = time.perf_counter()
        try:
            for b in head:
                s.sendall(bytes([b]))
                s.settimeout(read_timeout - 0.5)
                try:
                    s.recv(4096)
                    break  # an answer (408) or the close
                except socket.timeout:
                    continue
        except OSError:
            pass
        cut.append(time.perf_counter() - t0)
        s.close()
    try:
        ts = [threading.Thread(target=one) for _ in range(clients)]
        [t.start() for t in ts]
        [t.join() for t in ts]
    finally:
        srv.stop()
    return [f"slowloris: {clients} heads at 1 byte per {read_timeout - 0.5:.1f} s, READ_TIMEOUT={read_timeout:.0f}",
            f"cut after {min(cut):.2f}-{max(cut):.2f} s", "", ""]


def huge_headers(clients=100, size=16 << 20):
    """`clients` connections at once, each sending a 16 MiB header line: how fast each is
    refused and how much authd's peak RSS grows. Goals: < 100 ms, < 8 MiB."""
    srv = Authd(DB)
    hwm0 = srv.vm("VmHWM")
    chunk = b"a" * 65536
    took, statuses = [], []

    def one():
        s = socket.create_connection(("127.0.0.1", srv.port), timeout=10)
        t0 = time.perf_counter()
        status = "none"
        try:
            s.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: ")
            sent = 0
            s.setblocking(False)
            answer = b""
            while sent < size:
                try:
                    sent += s.send(chunk)
                except BlockingIOError:
                    pass
                try:
                    got = s.recv(4096)
                    answer += got
                    if got == b"" or b"\r\n" in answer:
                        break
                except BlockingIOError:
                    time.sleep(0.001)
            status = answer.split(b" ")[1].decode() if answer.count(b" ") else "closed"
        except OSError:
            status = "reset"
        took.append(time.perf_counter() - t0)
        statuses.append(status)
        s.close()
    try:
        ts = [threading.Thread(target=one) for _ in range(clients)]
        [t.start() for t in ts]
        [t.join() for t in ts]
        time.sleep(0.5)
        grew = srv.vm("VmHWM") - hwm0
        healthy = http(srv.port, "GET", "/healthz")[0]
    finally:
        srv.stop()
    took.sort()
    counts = {s: statuses.count(s) for s in set(statuses)}
    return [f"{clients} clients at once, each a {size >> 20} MiB header line (answers: {counts}; /healthz after: {healthy})",
            f"refused in {1000 * took[len(took) // 2]:.0f} ms median, {1000 * took[-1]:.0f} ms max",
            f"peak RSS grew {grew:.1f} MiB", ""]


def wire():
    rows = [idle_connections(), slowloris(), huge_headers()]
    print()
    print(f"The HTTP layer ({os.path.basename(BIN)} at {BIN}):")
    print(table(["what", "result", "", ""], rows))


DB = None


def main():
    global DB
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # run the atexit clean-ups
    db = "bench_" + secrets.token_hex(4)
    DB = db
    psql("postgres", f"CREATE DATABASE {db}")
    try:
        if "--wire-only" not in sys.argv:
            run(db)
        # The HTTP layer's figures on a database of their own (the one above ends with a
        # million users whose canonical emails the next start would record first).
        DB = db + "_wire"
        psql("postgres", f"CREATE DATABASE {DB}")
        try:
            Authd(DB).stop()  # migrates
            wire()
        finally:
            psql("postgres", f"DROP DATABASE IF EXISTS {DB} WITH (FORCE)")
    finally:
        psql("postgres", f"DROP DATABASE IF EXISTS {db} WITH (FORCE)")


def run(db):
    size_mb = os.path.getsize(BIN) / 1e6
    cold = Authd(db)  # the first start migrates; time the second, as a restart would be
    cold.stop()
    srv = Authd(db)
    port = srv.port
    rows = []
    status, _, _ = http(port, "POST", "/api/register/",
                        json.dumps({"name": "Bench", "email": "bench@example.com", "password": PASSWORD}))
    assert status == 201, status
    status, head, _ = http(port, "POST", "/api/login/", json.dumps({"email": "bench@example.com", "password": PASSWORD}))
    assert status == 200, status
    cookie = re.search(r"(?im)^set-cookie: (jwt=[^;]+)", head).group(1)
    fill_users(db, 1000)

    print(f"authd bench: {CORES} cores, {DUR} s per run, BCRYPT_COST=12, default WORKERS and pool, "
          "RUST_LOG=warn (no access log) unless a row says otherwise; "
          f"kernel.sched_autogroup_enabled={autogroup()}", flush=True)
    for c in (1, 16, 256):
        r = wrk(port, "/api/user/", c, cookie=cookie, label=f"GET /api/user/ c={c}", pid=srv.proc.pid)
        rows.append(latency_row(f"GET /api/user/, {c} conn", r))
        print(rows[-1], flush=True)
    # authd against the bare stack at 64 connections: rounds taken in turn, both servers up
    # throughout, the order within a round alternating; the median of each, and the median
    # of the rounds' ratios (each ratio compares two runs seconds apart).
    bare = Bare(db, cookie) if os.path.exists(BARE) else None
    ours, theirs = [], []
    for i in range(BARE_ROUNDS if bare else 1):
        def authd_run():
            ours.append(wrk(port, "/api/user/", 64, secs=ROUND_SECS, cookie=cookie,
                            label=f"GET /api/user/ c=64, round {i + 1}", pid=srv.proc.pid))

        def bare_run():
            theirs.append(wrk(bare.port, "/", 64, secs=ROUND_SECS, cookie=cookie,
                              label=f"bare stack c=64, round {i + 1}", pid=bare.proc.pid))
        if not bare:
            authd_run()
        elif i % 2 == 0:
            authd_run()
            bare_run()
        else:
            bare_run()
            authd_run()
    if bare:
        bare.stop()
    r = median_run(ours)
    rows.append(latency_row(f"GET /api/user/, 64 conn (median of {len(ours)})", r))
    print(rows[-1], flush=True)
    if bare:
        b = median_run(theirs)
        rows.append(latency_row(f"the bare stack (bench/bare), 64 conn (median of {len(theirs)})", b))
        ratios = [o["rps"] / t["rps"] for o, t in zip(ours, theirs)]
        rows.append(["authd / bare stack at 64 conn, round by round",
                     ", ".join(f"{x:.2f}" for x in ratios),
                     f"median round: {sorted(ratios)[len(ratios) // 2]:.2f}x; "
                     f"medians: {r['rps'] / b['rps']:.2f}x", ""])
        rows.append(["CPU per GET /api/user/ at 64 conn: authd, bare stack", f"{r['cpu_us']:.0f} us, {b['cpu_us']:.0f} us", "(process user+system time)", ""])
    rt_user = round_trips(db, port, "/api/user/", cookie)
    rt_health = round_trips(db, port, "/healthz")
    rows.append(["database transactions per request: /api/user/, /healthz",
                 f"{rt_user:.3f}, {rt_health:.3f}", "(pg_stat_database.xact_commit)", ""])
    logged = Authd(db, {"RUST_LOG": "info"})
    r = wrk(logged.port, "/api/user/", 64, cookie=cookie, label="GET /api/user/ c=64, access log on")
    logged.stop()
    rows.append(latency_row("GET /api/user/, 64 conn, access log on (RUST_LOG=info)", r))
    r = wrk(port, "/healthz", 64, label="GET /healthz c=64")
    rows.append(latency_row("GET /healthz, 64 conn", r))

    one = wrk(port, "/api/login/", 1, secs=max(DUR, 5), script=LOGIN, label="login c=1")
    verify_s = one["mean"] / 1000
    bound = CORES / verify_s
    many = wrk(port, "/api/login/", 16, secs=max(DUR, 10), script=LOGIN, label="login c=16")
    time.sleep(3)  # the logins still queued when wrk stopped would share the next run's CPU
    rows.append(["one login, alone (bcrypt verify + 3 round trips)", f"{one['mean']:.0f} ms{mark(one)}", "", ""])
    rows.append([f"POST /api/login/, 16 conn", f"{many['rps']:.1f} logins/s{mark(many)}",
                 f"{100 * many['rps'] / bound:.0f}% of the bound {bound:.1f}/s", f"p99 {many['p99']:.0f} ms"])
    reg = wrk(port, "/api/register/", 16, secs=max(DUR, 8), script=REGISTER, label="register c=16")
    time.sleep(3)
    rows.append(["POST /api/register/, 16 conn", f"{reg['rps']:.1f} req/s{mark(reg)}", "", f"p99 {reg['p99']:.0f} ms"])

    # Cheap requests while 16 clients flood the login (bcrypt saturates the cores), with the
    # kernel's autogroup as the host has it and, where the bench may set it (root), flat:
    # the ARCHITECTURE.md criterion (BENCHMARKS.md says why).
    stock = autogroup()
    settings = [stock] + (["0"] if stock == "1" and autogroup_writable() else [])
    atexit.register(set_autogroup, stock)  # also when the bench stops halfway
    for setting in settings:
        set_autogroup(setting)
        try:
            rows.extend(login_flood(port, cookie, f"autogroup {'on' if setting == '1' else 'off'}"))
        finally:
            set_autogroup(stock)
    if len(settings) == 1 and stock == "1":
        rows.append(["(autogroup off not measured: /proc/sys/kernel/sched_autogroup_enabled is not writable)", "", "", ""])
    # The control: the same load while two busy loops at the lowest priority there is
    # (SCHED_IDLE) hold the cores. No bcrypt, no authd change: what the machine's scheduler
    # alone does to the tail when the CPU is saturated.
    hogs = [subprocess.Popen(["chrt", "-i", "0", "sh", "-c", "while :; do :; done"]) for _ in range(CORES)]
    try:
        time.sleep(1)
        rows.extend(user_beside(port, cookie, f"beside {CORES} SCHED_IDLE busy loops", prefix="control: "))
    finally:
        for h in hogs:
            h.kill()
            h.wait()

    scale = []
    for total in (1000, 100_000, 1_000_000):
        fill_users(db, total)
        r = wrk(port, "/api/user/", 64, cookie=cookie, label=f"user c=64 with {total} users")
        scale.append(latency_row(f"{total:,} users", r))

    hwm, rss = srv.vm("VmHWM"), srv.vm("VmRSS")
    srv.stop()
    rows.append(["peak RSS (VmHWM) after all of the above", f"{hwm:.1f} MiB", f"now {rss:.1f} MiB", ""])
    rows.append(["stripped binary", f"{size_mb:.1f} MB", "", ""])
    rows.append(["start-up to the first 200 from /healthz", f"{srv.startup_ms:.0f} ms", f"first start, migrating: {cold.startup_ms:.0f} ms", ""])

    print()
    print(table(["what", "result", "p50 / share", "p99"], rows))
    print()
    print("GET /api/user/ at 64 connections against the size of accounts_user:")
    print(table(["users", "req/s", "p50", "p99"], scale))

    if "--sweep" in sys.argv:
        sweep(db, cookie)

    if invalid:
        print("\nINVALID runs (a connection was never answered, or errors):")
        for line in invalid:
            print("  " + line)
        sys.exit(1)


def sweep(db, cookie):
    print("\nWORKERS and DB_POOL_SIZE, GET /api/user/ (64 and 256 connections):")
    rows = []
    for workers, pool in ((2, 4), (4, 6), (8, 10), (16, 18), (32, 34), (8, 4)):
        s = Authd(db, {"WORKERS": str(workers), "DB_POOL_SIZE": str(pool)})
        r64 = wrk(s.port, "/api/user/", 64, cookie=cookie, label=f"sweep {workers}/{pool} c=64")
        r256 = wrk(s.port, "/api/user/", 256, cookie=cookie, label=f"sweep {workers}/{pool} c=256")
        rows.append([workers, pool, f"{r64['rps']:,.0f}{mark(r64)}", f"{r64['p99']:.2f} ms",
                     f"{r256['rps']:,.0f}{mark(r256)}", f"{r256['p99']:.2f} ms", f"{s.vm('VmHWM'):.1f} MiB"])
        s.stop()
        print(rows[-1], flush=True)
    print(table(["WORKERS", "DB_POOL_SIZE", "req/s c=64", "p99 c=64", "req/s c=256", "p99 c=256", "VmHWM"], rows))


if __name__ == "__main__":
    main()
