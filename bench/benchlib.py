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
        self.cli("dev", "up", "--nodes", str(self.nodes), "--dir", self.dir,
                 "--base-addr", self.base_addr, timeout=180)

    def rest(self, method, path, timeout=30):
        req = urllib.request.Request(self.url + path, method=method)
        token = base64.b64encode(("%s:%s" % (OPERATOR_USER, OPERATOR_PASSWORD)).encode()).decode()
        req.add_header("Authorization", "Basic " + token)
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return json.loads(resp.read() or b"null")

    def create_db(self, *args):
        self.cli("db", "create", *args)

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
