"""Shared helpers for the bench/ scripts (python3 stdlib only).

Everything here starts processes on loopback only and remembers their pids so the scripts can stop
exactly what they started, never anything found by name.
"""

import base64
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

REPO = os.path.dirname(os.path.dirname(os.path.realpath(__file__)))
RESULTS = os.path.join(REPO, "bench", "results")
OPERATOR_USER = "admin"
OPERATOR_PASSWORD = "bench-operator"


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def median(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def percentile(xs, p):
    """Nearest-rank percentile (p in 0..100) of a non-empty list."""
    s = sorted(xs)
    k = max(0, min(len(s) - 1, int(round(p / 100.0 * len(s) + 0.5)) - 1))
    return s[k]


def build_release(skip):
    binary = os.path.join(REPO, "target", "release", "flotilla")
    if not skip:
        log("building: cargo build --release -p flotilla")
        subprocess.run(["cargo", "build", "--release", "-p", "flotilla"], cwd=REPO, check=True,
                       stdout=sys.stderr)
    if not os.path.exists(binary):
        sys.exit("missing %s: run cargo build --release -p flotilla" % binary)
    return binary


def install_signal_cleanup():
    """Turn SIGINT/SIGTERM/SIGHUP into SystemExit so `finally:` blocks run (our trap)."""
    def handler(signum, _frame):
        raise SystemExit(128 + signum)
    for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(s, handler)


def kill_pid(pid, wait_s=5.0):
    """Stop one process we started, by pid: TERM, then KILL if it lingers."""
    if not pid:
        return
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.time() + wait_s
    while time.time() < deadline:
        try:
            done, _ = os.waitpid(pid, os.WNOHANG)
            if done == pid:
                return
        except ChildProcessError:
            # not our child (already reaped or detached): poll for existence instead
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return
        time.sleep(0.05)
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


class Cluster:
    """A dev cluster of the release binary in a private temp dir."""

    def __init__(self, binary, nodes, base_addr, tag):
        self.binary = binary
        self.nodes = nodes
        self.base_addr = base_addr
        self.dir = tempfile.mkdtemp(prefix="flotilla-bench-%s." % tag)
        self.url = "http://%s:8080" % base_addr
        self.env = dict(os.environ, FLOTILLA_USER=OPERATOR_USER,
                        FLOTILLA_PASSWORD=OPERATOR_PASSWORD, FLOTILLA_URL=self.url)
        self.started = False
        self.engine_pids = set()

    def cli(self, *args, timeout=120, check=True):
        r = subprocess.run([self.binary] + list(args), env=self.env, capture_output=True,
                           text=True, timeout=timeout)
        if check and r.returncode != 0:
            raise RuntimeError("flotilla %s failed (%d): %s %s"
                               % (" ".join(args), r.returncode, r.stdout, r.stderr))
        return r

    def up(self):
        self.started = True
        # Plain REST on 8080 (off by default) keeps the bench's own REST calls simple; the
        # data path under measurement is the same.
        self.cli("dev", "up", "--nodes", str(self.nodes), "--dir", self.dir,
                 "--base-addr", self.base_addr, "--http-port", "8080", timeout=180)

    def rest(self, method, path, timeout=30):
        req = urllib.request.Request(self.url + path, method=method)
        token = base64.b64encode(("%s:%s" % (OPERATOR_USER, OPERATOR_PASSWORD)).encode()).decode()
        req.add_header("Authorization", "Basic " + token)
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return json.loads(resp.read() or b"null")

    def create_db(self, *args):
        self.cli("db", "create", "--no-wait", *args)

    def wait_active(self, name, timeout_s=90):
        deadline = time.time() + timeout_s
        while time.time() < deadline:
            r = self.cli("db", "show", name, "--json", check=False)
            if r.returncode == 0 and json.loads(r.stdout).get("status") == "active":
                return
            time.sleep(0.25)
        raise RuntimeError("database %s not active after %ds" % (name, timeout_s))

    def status(self):
        return json.loads(self.cli("status", "--json").stdout)

    def db(self, name):
        return json.loads(self.cli("db", "show", name, "--json").stdout)

    def shards(self, bdb_uid=None):
        shards = self.rest("GET", "/v1/shards")
        return [s for s in shards if bdb_uid is None or s["bdb_uid"] == bdb_uid]

    def node_addrs(self):
        return {n["uid"]: n["addr"] for n in self.status()["nodes"]}

    def secret(self, node=1):
        with open(os.path.join(self.dir, "node-%d" % node, "identity.json")) as f:
            return json.load(f)["secret"]

    def engine_login(self, role="admin", node=1):
        """(user, password) of the engines' user for `role` (admin, proxy, replication)."""
        return ENGINE_USERS[role], engine_password(self.secret(node), role)

    def remember_engine_pids(self):
        """Record the engines' pids (from their pidfiles) so cleanup can make sure they are gone."""
        for root, _dirs, files in os.walk(self.dir):
            for f in files:
                if f.endswith(".pid"):
                    try:
                        with open(os.path.join(root, f)) as fh:
                            pid = int(fh.read().strip())
                    except (OSError, ValueError):
                        continue
                    if "shards" in root:
                        self.engine_pids.add(pid)

    def down(self):
        if not self.started:
            return
        try:
            self.remember_engine_pids()
        except OSError:
            pass
        try:
            r = self.cli("dev", "down", "--dir", self.dir, "--purge", timeout=120, check=False)
            log((r.stdout + r.stderr).strip())
        except Exception as e:  # keep cleaning up
            log("dev down failed: %s" % e)
        for pid in self.engine_pids:  # engines we caused to start and that outlived dev down
            try:
                os.kill(pid, 0)
            except (ProcessLookupError, PermissionError):
                continue
            try:
                with open("/proc/%d/stat" % pid) as fh:
                    if fh.read().split(")")[-1].split()[0] == "Z":
                        continue
            except OSError:
                continue
            log("stopping leftover engine pid %d" % pid)
            kill_pid(pid)
        self.started = False


def write_json(name, data):
    os.makedirs(RESULTS, exist_ok=True)
    path = os.path.join(RESULTS, "%s-%s.json" % (name, time.strftime("%Y-%m-%d")))
    with open(path, "w") as f:
        json.dump(data, f, indent=2, sort_keys=True)
        f.write("\n")
    return path


def machine_info():
    return {"nproc": os.cpu_count(), "uname": " ".join(os.uname()),
            "time": time.strftime("%Y-%m-%dT%H:%M:%S%z")}


# --- process, log and RESP helpers (appended for bench/scale) ---------------------------------

class RespError(Exception):
    """An error reply (-ERR ...) from a Redis-protocol server."""


def read_pidfile(path):
    """The pid in a pidfile, or None when missing or unreadable."""
    try:
        with open(path) as f:
            return int(f.read().strip())
    except (OSError, ValueError):
        return None


def pid_running(pid):
    """True when /proc/PID exists and is not a zombie (an exited, unreaped process)."""
    try:
        with open("/proc/%d/stat" % pid) as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def proc_status_kb(pid, field="VmRSS"):
    """A kB field of /proc/PID/status (VmRSS, VmHWM = peak RSS, ...), or None."""
    try:
        with open("/proc/%d/status" % pid) as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return None


def proc_cpu_seconds(pid):
    """User + system CPU seconds a process has used so far (/proc/PID/stat), or None."""
    try:
        with open("/proc/%d/stat" % pid) as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / float(os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError):
        return None


def cluster_daemon_pids(cluster):
    """{node number: daemon pid} from the pidfiles of a Cluster's node dirs (live ones only)."""
    out = {}
    for n in range(1, cluster.nodes + 1):
        pid = read_pidfile(os.path.join(cluster.dir, "node-%d" % n, "flotilla.pid"))
        if pid and pid_running(pid):
            out[n] = pid
    return out


def processes_in_dir(root):
    """Live pids whose working directory is inside `root` (engines chdir to their shard dir), read
    from /proc: how to find every engine a cluster started, with or without a pidfile."""
    root = os.path.realpath(root).rstrip("/") + "/"
    out = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            cwd = os.readlink("/proc/%s/cwd" % name)
        except OSError:
            continue
        if (cwd + "/").startswith(root) and pid_running(int(name)):
            out.append(int(name))
    return sorted(out)


def proc_cmdline(pid):
    try:
        with open("/proc/%d/cmdline" % pid, "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


def plain_log_lines(path):
    """The lines of a daemon log with ANSI colours stripped ([] when it cannot be read)."""
    import re
    ansi = re.compile(r"\x1b\[[0-9;]*m")
    try:
        with open(path, errors="replace") as f:
            return [ansi.sub("", line.rstrip("\n")) for line in f]
    except OSError:
        return []


def log_lines(path, levels=("WARN", "ERROR")):
    """Lines of a daemon log whose level is one of `levels` (ANSI colours stripped)."""
    out = []
    for line in plain_log_lines(path):
        words = line.split(None, 2)
        if len(words) >= 2 and words[1] in levels:
            out.append(line)
    return out


def _resp_encode(args):
    out = [b"*%d\r\n" % len(args)]
    for a in args:
        b = a if isinstance(a, bytes) else str(a).encode()
        out.append(b"$%d\r\n%s\r\n" % (len(b), b))
    return b"".join(out)


def _resp_read(f):
    line = f.readline()
    if not line:
        raise ConnectionError("connection closed")
    kind, rest = line[:1], line[1:-2]
    if kind == b"+":
        return rest.decode()
    if kind == b"-":
        return RespError(rest.decode())
    if kind == b":":
        return int(rest)
    if kind == b"$":
        n = int(rest)
        if n < 0:
            return None
        data = f.read(n + 2)
        return data[:-2]
    if kind == b"*":
        n = int(rest)
        return None if n < 0 else [_resp_read(f) for _ in range(n)]
    raise ValueError("unexpected RESP reply %r" % line[:80])


# The engines' users and their passwords: HMAC-SHA256 of a role label under the cluster secret,
# as crates/model/src/engine_users.rs derives them.
ENGINE_USERS = {"admin": "flotilla-admin", "proxy": "flotilla-proxy",
                "replication": "flotilla-replication"}


def engine_password(secret, role):
    import hashlib
    import hmac
    label = b"flotilla engine user v1: " + ENGINE_USERS[role].encode()
    return hmac.new(secret.encode(), label, hashlib.sha256).hexdigest()


def resp_pipeline(host, port, commands, password=None, timeout=10.0):
    """Sends `commands` (lists of args) on one connection, AUTH first when `password` is given
    (a password, or a (user, password) login); returns their replies in order (an error reply is
    a RespError value, not raised)."""
    import socket
    auth = ["AUTH"] + (list(password) if isinstance(password, tuple) else [password])
    cmds = ([auth] if password else []) + [list(c) for c in commands]
    with socket.create_connection((host, port), timeout=timeout) as s:
        s.sendall(b"".join(_resp_encode(c) for c in cmds))
        f = s.makefile("rb")
        replies = [_resp_read(f) for _ in cmds]
    if password:
        if isinstance(replies[0], RespError):
            raise replies[0]
        replies = replies[1:]
    return replies


# --- engine, port, INFO and log helpers (appended for bench/db-upgrade) ------------------------

def engines_dir():
    return os.environ.get("FLOTILLA_ENGINES_DIR") or os.path.join(REPO, ".cache", "engines")


def engine_binary(version):
    """The server binary of an engine version (redis-6.2, ..., valkey-9.1) in the engine cache."""
    name = "valkey-server" if version.startswith("valkey") else "redis-server"
    path = os.path.join(engines_dir(), version, "bin", name)
    if not os.path.exists(path):
        sys.exit("missing engine %s: run scripts/fetch-engines" % path)
    return path


def free_port(host, start, end):
    """The first port in [start, end) nothing listens on or is bound to at `host`."""
    import socket
    for port in range(start, end):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            s.bind((host, port))
            return port
        except OSError:
            continue
        finally:
            s.close()
    raise RuntimeError("no free port on %s in %d-%d" % (host, start, end - 1))


def parse_info(text):
    """An INFO reply (bytes or str) as {field: value} (values are strings)."""
    if isinstance(text, bytes):
        text = text.decode(errors="replace")
    out = {}
    for line in text.splitlines():
        if ":" in line and not line.startswith("#"):
            k, v = line.split(":", 1)
            out[k.strip()] = v.strip()
    return out


def engine_info(host, port, password=None, section="all", timeout=10.0):
    """INFO <section> of an engine as a dict (raises on error replies); `password` as
    resp_pipeline takes it."""
    (reply,) = resp_pipeline(host, port, [["INFO", section]], password=password, timeout=timeout)
    if isinstance(reply, RespError):
        raise reply
    return parse_info(reply)


def start_engine(version, host, port, workdir, args=(), timeout_s=20):
    """Starts a standalone engine as our child (not daemonized, so kill_pid stops it), bound to
    `host:port`, memory only (`--save '' --appendonly no`), dir and log (engine.log) in `workdir`;
    returns the Popen once it answers PING. Extra config goes in `args` ("--name", "value", ...)."""
    os.makedirs(workdir, exist_ok=True)
    cmd = [engine_binary(version), "--bind", host, "--port", str(port), "--dir", workdir,
           "--logfile", os.path.join(workdir, "engine.log"), "--daemonize", "no",
           "--save", "", "--appendonly", "no"] + [str(a) for a in args]
    with open(os.path.join(workdir, "launch.out"), "w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, cwd=workdir)
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError("%s exited (%s) at start: see %s" % (version, proc.returncode,
                                                                    workdir))
        try:
            if resp_pipeline(host, port, [["PING"]], timeout=2) == ["PONG"]:
                return proc
        except OSError:
            pass
        time.sleep(0.05)
    kill_pid(proc.pid)
    raise RuntimeError("%s on %s:%d did not answer PING in %d s" % (version, host, port, timeout_s))


def engine_log_events(path):
    """(epoch seconds, message) for every line of a redis/valkey log (`PID:R 27 Nov 2026
    12:30:53.170 * message`, local time); [] when the file is missing."""
    import re
    pat = re.compile(r"^\d+:[A-Z] (\d{1,2} \w{3} \d{4} \d\d:\d\d:\d\d)\.(\d{3}) . (.*)$")
    out = []
    try:
        with open(path, errors="replace") as f:
            for line in f:
                m = pat.match(line.rstrip("\n"))
                if m:
                    t = time.mktime(time.strptime(m.group(1), "%d %b %Y %H:%M:%S"))
                    out.append((t + int(m.group(2)) / 1000.0, m.group(3)))
    except OSError:
        pass
    return out


def daemon_log_events(path, needle):
    """(epoch seconds, line) for the lines of a Flotilla daemon log containing `needle` (ANSI
    colours stripped; timestamps are RFC 3339 UTC)."""
    import calendar
    import re
    pat = re.compile(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(\.\d+)?Z ")
    out = []
    for line in plain_log_lines(path):
        if needle not in line:
            continue
        m = pat.match(line)
        if m:
            t = calendar.timegm(time.strptime(m.group(1), "%Y-%m-%dT%H:%M:%S"))
            out.append((t + float(m.group(2) or 0), line))
    return out


def replica_sync_phases(events, since=None):
    """Phases of the last completed full sync in a replica's engine log events (from
    engine_log_events), after `since` (epoch s) if given: {full_resync, loading, finished} epoch
    times (the master accepted a full resync / the RDB is received and loading starts / link up).
    None when the log shows no completed full sync."""
    evs = [(t, m) for t, m in events if since is None or t >= since]
    fin = [i for i, (_t, m) in enumerate(evs) if "REPLICA sync: Finished with success" in m]
    if not fin:
        return None
    end = fin[-1]
    full = [i for i in range(end) if evs[i][1].startswith("Full resync from")]
    if not full:
        return None
    start = full[-1]
    load = [i for i in range(start, end) if "REPLICA sync: Loading DB in memory" in evs[i][1]]
    return {"full_resync": evs[start][0], "loading": evs[load[-1]][0] if load else None,
            "finished": evs[end][0]}
