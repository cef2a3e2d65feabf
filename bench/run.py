#!/usr/bin/env python3
"""`just bench`: bookinfo-up (side A) against the seed's kubectl sequence (side B).

A kwok cluster from the testbed, created by `bookinfo-up plans/sim.toml` (so the three Istio
Helm releases are installed once, timed for neither side). Then:

  sim no-op         the full sim plan again over its own converged cluster, Helm steps included
  cold              the Bookinfo and addon objects absent (deleted between runs, untimed), until
                    every Deployment is rolled out
  no-op             everything already applied by the side under test
  drift             one Deployment's image and the ingress Service's ports changed by hand,
                    until restored and rolled out
  cold-unthrottled  cold again, on a second cluster whose controller-manager is not
                    rate-limited (the default limit is the floor of the cold figures)

A is `bookinfo-up plans/bench/seed-steps.toml --kubeconfig <cluster>`; B is
`bench/baseline.sh` (kubectl). Runs alternate A, B, A, B, ...; each timed run is one process,
from fork to exit. For every timed run the harness also records:

  API requests   client-side: bookinfo-up's kube-client trace lines (BOOKINFO_UP_LOG) and
                 kubectl's -v=6 "Response" lines; server-side: the change of the sum of
                 apiserver_request_total over the run (resource requests of every client:
                 controllers, kwok, helm; discovery and OpenAPI are not counted there)
  peak RSS       getrusage of the process (wait4, from a small wrapper); for the sim plan,
                 whose helm and kwokctl children would dominate that, its own VmHWM, sampled
  readiness      a list+watch of Deployments, started before the run, stamps (host clock,
  latency        sub-second) when the last one was submitted and when it was rolled out; the
                 latency runs from then (or from the start of the rollout step, if later) to
                 the end of the tool's rollout step (A: its JSON log; B: the script's
                 `kubectl rollout status` commands)

Results go to bench/results.md and bench/results.json. Needs the testbed environment
(`eval "$(bash testbed/env.sh)"`) and `cargo build --release`; Python 3.11+ standard library
only.
"""

from __future__ import annotations

import argparse
import base64
import datetime as dt
import hashlib
import http.client
import json
import os
import platform
import re
import shutil
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import tomllib
from pathlib import Path
from urllib.parse import urlparse

ROOT = Path(__file__).resolve().parent.parent
UP = ROOT / "target/release/bookinfo-up"
DOWN = ROOT / "target/release/bookinfo-down"
PLAN_A = ROOT / "plans/bench/seed-steps.toml"
PLAN_SIM = ROOT / "plans/sim.toml"
BASELINE = ROOT / "bench/baseline.sh"
VERSIONS = ROOT / "testbed/versions.env"

# The Deployments both sides wait for (plan: `bookinfo/*`, `istio-system/*`).
WAITED = ("bookinfo", "istio-system")
ADDONS = ("prometheus", "grafana", "jaeger", "kiali")
# The ports the plan adds to the ingress gateway's Service (manifests/istio/ingress-ports.yaml).
ADDED_PORTS = {"http-bookinfo", "http-kiali"}
DRIFT_DEPLOYMENT = ("bookinfo", "reviews-v2")
UNTHROTTLED = "bench-unthrottled"
HELM_STEPS = ("istio-base", "istiod", "ingress-gateway")
# The fake node of src/provider/kwok.rs (node_manifest), for the cluster made with kwokctl.
KWOK_NODE = {
    "apiVersion": "v1", "kind": "Node",
    "metadata": {
        "name": "kwok-node-0",
        "annotations": {"kwok.x-k8s.io/node": "fake", "node.alpha.kubernetes.io/ttl": "0"},
        "labels": {"kubernetes.io/hostname": "kwok-node-0", "kubernetes.io/os": "linux",
                   "kubernetes.io/arch": "amd64", "kubernetes.io/role": "agent",
                   "node-role.kubernetes.io/agent": "", "type": "kwok"},
    },
    "status": {"allocatable": {"cpu": "32", "memory": "256Gi", "pods": "110"},
               "capacity": {"cpu": "32", "memory": "256Gi", "pods": "110"}},
}

TARGETS = {
    "noop_speedup": 60.0,       # issue 23 (was 10)
    "noop_seconds": 0.5,
    "cold_speedup": 3.0,
    "sim_noop_seconds": 0.060,  # issue 23 (was 1 s)
    "sim_noop_requests": 25,    # issue 23: own API requests of the full sim plan's no-op
    "prune_ms": 10.0,           # issue 22: what the ApplySet's phases add to a no-op
    "rss_mb": 50.0,
    "diff_speedup": 10.0,
}


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def median(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


# --- the API server, from Python's standard library ------------------------------------------


def kwokctl_ports(config: Path) -> Path:
    """Writes a kwokctl configuration at `config` giving every component a free port from the
    kernel, and returns its path."""
    listeners = [socket.create_server(("127.0.0.1", 0)) for _ in range(6)]
    ports = [sock.getsockname()[1] for sock in listeners]
    for sock in listeners:
        sock.close()
    config.write_text(
        "kind: KwokctlConfiguration\napiVersion: config.kwok.x-k8s.io/v1alpha1\noptions:\n"
        + "".join(f"  {k}: {v}\n" for k, v in zip(
            ("etcdPort", "etcdPeerPort", "kubeApiserverPort", "kubeControllerManagerPort",
             "kubeSchedulerPort", "kwokControllerPort"), ports)))
    return config


def credentials(kubeconfig: Path, work: Path, prefix: str = "") -> dict:
    """Server, CA, client certificate and key (as files in `work`, named with `prefix`) or
    token, from a kubeconfig's current context."""
    raw = subprocess.run(
        ["kubectl", "config", "view", "--raw", "-o", "json", "--kubeconfig", str(kubeconfig)],
        check=True, capture_output=True, text=True,
    ).stdout
    cfg = json.loads(raw)
    ctx = next(c["context"] for c in cfg["contexts"] if c["name"] == cfg["current-context"])
    cluster = next(c["cluster"] for c in cfg["clusters"] if c["name"] == ctx["cluster"])
    user = next(u["user"] for u in cfg["users"] if u["name"] == ctx["user"])

    def file_of(obj, key, name):
        if key in obj:
            return obj[key]
        data = obj.get(key + "-data")
        if data is None:
            return None
        p = work / f"{prefix}{name}"
        p.write_bytes(base64.b64decode(data))
        return str(p)
    return {"server": cluster["server"],
            "ca": file_of(cluster, "certificate-authority", "ca.crt"),
            "cert": file_of(user, "client-certificate", "client.crt"),
            "key": file_of(user, "client-key", "client.key"),
            "token": user.get("token")}


class Api:
    """Just enough of a Kubernetes client for the harness (GET, PATCH, watch, /metrics), with
    the kubeconfig's client certificate or token."""

    def __init__(self, kubeconfig: Path, work: Path):
        c = credentials(kubeconfig, work)
        server = urlparse(c["server"])
        self.host, self.port = server.hostname, server.port or 443
        self.ssl = ssl.create_default_context(cafile=c["ca"])
        if c["cert"]:
            self.ssl.load_cert_chain(c["cert"], c["key"])
        self.token = c["token"]

    def connection(self, timeout=60.0) -> http.client.HTTPSConnection:
        return http.client.HTTPSConnection(self.host, self.port, context=self.ssl, timeout=timeout)

    def headers(self) -> dict:
        h = {"Accept": "application/json", "User-Agent": "bookinfo-up-bench"}
        if self.token:
            h["Authorization"] = f"Bearer {self.token}"
        return h

    def request(self, method: str, path: str, body=None, ctype="application/json"):
        conn = self.connection()
        headers = self.headers()
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = ctype
        conn.request(method, path, body=data, headers=headers)
        resp = conn.getresponse()
        payload = resp.read()
        conn.close()
        return resp.status, payload

    def get(self, path: str):
        status, payload = self.request("GET", path)
        if status == 404:
            return None
        if status >= 300:
            raise RuntimeError(f"GET {path}: {status} {payload[:300]!r}")
        return json.loads(payload)

    def patch(self, path: str, body, ctype: str):
        status, payload = self.request("PATCH", path, body, ctype)
        if status >= 300:
            raise RuntimeError(f"PATCH {path}: {status} {payload[:300]!r}")
        return json.loads(payload)

    def requests_total(self) -> dict:
        """The apiserver_request_total counters summed, in total and by verb."""
        status, payload = self.request("GET", "/metrics")
        if status != 200:
            raise RuntimeError(f"GET /metrics: {status}")
        by_verb: dict[str, float] = {}
        for line in payload.decode().splitlines():
            if not line.startswith("apiserver_request_total{"):
                continue
            labels, value = line.rsplit(" ", 1)
            verb = re.search(r'verb="([^"]*)"', labels).group(1)
            by_verb[verb] = by_verb.get(verb, 0) + float(value)
        return {"total": sum(by_verb.values()), "by_verb": by_verb}


def metrics_delta(before: dict, after: dict) -> dict:
    """Requests between two scrapes. The apiserver counts resource requests only: discovery,
    OpenAPI and the /metrics scrapes themselves are not in apiserver_request_total."""
    verbs = set(before["by_verb"]) | set(after["by_verb"])
    by_verb = {v: int(after["by_verb"].get(v, 0) - before["by_verb"].get(v, 0)) for v in verbs}
    return {"total": int(after["total"] - before["total"]),
            "by_verb": {v: n for v, n in sorted(by_verb.items()) if n}}


def non_resource(url: str) -> bool:
    """Discovery (/api, /apis, /api/v1, /apis/GROUP/VERSION) and OpenAPI documents."""
    path = urlparse(url).path.rstrip("/")
    return bool(re.fullmatch(r"/api(/v1)?|/apis(/[^/]+/[^/]+)?|/apis/[^/]+|/openapi/.*|/version",
                             path))


def rolled_out(d: dict) -> bool:
    """The engine's rule (src/kube/readiness.rs), `kubectl rollout status` plus no surplus:
    spec observed, and updated = replicas = ready = available = desired."""
    spec, status = d.get("spec") or {}, d.get("status") or {}
    if status.get("observedGeneration", 0) < d["metadata"].get("generation", 0):
        return False
    desired = spec.get("replicas", 1)
    return all(status.get(k, 0) == desired for k in
               ("updatedReplicas", "replicas", "readyReplicas", "availableReplicas"))


class ReadyWatch:
    """Lists, then watches, the Deployments of the waited-for namespaces, and stamps (host
    clock, sub-second) when each last had its spec changed (created, or a new generation) and
    when each last became rolled out."""

    def __init__(self, api: Api):
        self.api = api
        self.ready_at: dict[str, float | None] = {}
        self.changed_at: dict[str, float] = {}
        self.generation: dict[str, int] = {}
        self.lock = threading.Lock()
        self.conn = None
        self.stopped = False

    def _see(self, d: dict, t: float, event: str | None):
        ns = d["metadata"].get("namespace")
        if ns not in WAITED:
            return
        name = f"{ns}/{d['metadata']['name']}"
        generation = d["metadata"].get("generation", 0)
        with self.lock:
            if event == "DELETED":
                self.ready_at.pop(name, None)
                self.generation.pop(name, None)
                return
            if event is not None and generation > self.generation.get(name, 0):
                self.changed_at[name] = t
            self.generation[name] = generation
            if rolled_out(d):
                if self.ready_at.get(name) is None:
                    self.ready_at[name] = t
            else:
                self.ready_at[name] = None

    def start(self):
        listing = self.api.get("/apis/apps/v1/deployments")
        t = time.time()
        for d in listing["items"]:
            self._see(d, t, None)
        rv = listing["metadata"]["resourceVersion"]
        self.conn = self.api.connection(timeout=None)
        self.conn.request("GET", f"/apis/apps/v1/deployments?watch=1&resourceVersion={rv}"
                          "&timeoutSeconds=1800", headers=self.api.headers())
        self.resp = self.conn.getresponse()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        return self

    def _run(self):
        try:
            for line in self.resp:
                t = time.time()
                ev = json.loads(line)
                if ev["type"] in ("ADDED", "MODIFIED", "DELETED"):
                    self._see(ev["object"], t, ev["type"])
        except Exception:
            if not self.stopped:
                raise

    def stop(self):
        self.stopped = True
        try:
            self.conn.sock.shutdown(socket.SHUT_RDWR)
        except Exception:
            pass
        self.conn.close()

    def timeline(self) -> dict:
        """When the last Deployment spec change arrived, when the last Deployment became
        rolled out, and which are not rolled out."""
        with self.lock:
            waiting = [n for n, t in self.ready_at.items() if t is None]
            times = [t for t in self.ready_at.values() if t is not None]
            changed = list(self.changed_at.values())
        return {"last_ready": max(times) if times and not waiting else None,
                "last_changed": max(changed) if changed else None, "waiting": waiting}


# --- measured processes --------------------------------------------------------------------------


# Spawns the measured process from a small interpreter, not from this one: a child forked from
# a large process starts with that process's resident set, and getrusage's peak would count it.
# From here the floor is about 7 MB. Wall time is taken around fork and wait4, so the
# interpreter's own start-up is not in it. With `sample` set, the child's own VmHWM is also read
# every 20 ms (for the sim plan, whose helm and kwokctl children dominate getrusage's figure).
WRAPPER = r"""
import os, sys, time, json, threading
out, sample, argv = sys.argv[1], sys.argv[2] == "1", sys.argv[3:]
t0 = time.time(); p0 = time.perf_counter()
pid = os.fork()
if pid == 0:
    try:
        os.execvp(argv[0], argv)
    finally:
        os._exit(127)
hwm = [0]
done = threading.Event()
def sampler():
    while not done.is_set():
        try:
            with open("/proc/%d/status" % pid) as f:
                for line in f:
                    if line.startswith("VmHWM:"):
                        hwm[0] = max(hwm[0], int(line.split()[1]))
        except OSError:
            return
        done.wait(0.02)
if sample:
    th = threading.Thread(target=sampler, daemon=True); th.start()
_, status, ru = os.wait4(pid, 0)
p1 = time.perf_counter(); t1 = time.time()
done.set()
with open(out, "w") as f:
    json.dump({"seconds": p1 - p0, "t_start": t0, "t_end": t1, "maxrss_kb": ru.ru_maxrss,
               "cpu_seconds": ru.ru_utime + ru.ru_stime,
               "hwm_kb": hwm[0] if sample else None, "rc": os.waitstatus_to_exitcode(status)}, f)
"""


def measure(argv, env, out: Path, err: Path, sample_hwm=False) -> dict:
    """Runs argv to completion: wall time, exit code, start and end (host clock), the
    getrusage peak RSS and CPU time of the process and its waited-for children and, with
    sample_hwm, the process's own VmHWM."""
    res = out.with_suffix(".rusage.json")
    cmd = [sys.executable, "-I", "-S", "-c", WRAPPER, str(res), "1" if sample_hwm else "0",
           *[str(a) for a in argv]]
    with open(out, "wb") as o, open(err, "wb") as e:
        subprocess.run(cmd, stdout=o, stderr=e, env=env, cwd=ROOT, check=False)
    w = json.loads(res.read_text())
    return {
        "seconds": w["seconds"], "rc": w["rc"], "t_start": w["t_start"], "t_end": w["t_end"],
        "maxrss_mb": w["maxrss_kb"] / 1024, "cpu_seconds": w.get("cpu_seconds"),
        "hwm_mb": None if w["hwm_kb"] is None else w["hwm_kb"] / 1024,
        "stdout": str(out), "stderr": str(err),
    }


def parse_ts(s: str) -> float:
    return dt.datetime.fromisoformat(s.replace("Z", "+00:00")).timestamp()


def read_engine_run(r: dict) -> dict:
    """From bookinfo-up's --output json (stdout) and --log-format json (stderr): step outcomes,
    when each step finished, and the kube-client requests it sent."""
    info = {"steps": {}, "requests": 0, "requests_by_verb": {}, "step_started": {},
            "step_finished": {}, "first_step_started": None, "non_resource": 0,
            "applyset": {}, "inventory_started": None}
    try:
        summary = json.loads(Path(r["stdout"]).read_text())
        for s in summary["steps"]:
            info["steps"][s["id"]] = {"outcome": s["outcome"], "elapsed": s["elapsed"],
                                      "summary": s.get("summary", "")}
    except (json.JSONDecodeError, KeyError, FileNotFoundError):
        pass
    for line in Path(r["stderr"]).read_text().splitlines():
        try:
            o = json.loads(line)
        except json.JSONDecodeError:
            continue
        f = o.get("fields", {})
        if f.get("message") == "requesting":
            span = o.get("span", {})
            verb = span.get("http.method", "?")
            url = span.get("http.url", "")
            if "watch=true" in url or "watch=1" in url:
                verb = "WATCH"
            info["requests"] += 1
            info["requests_by_verb"][verb] = info["requests_by_verb"].get(verb, 0) + 1
            if non_resource(url):
                info["non_resource"] += 1
            kind = applyset_request(verb, url)
            if kind:
                info["applyset"][kind] = info["applyset"].get(kind, 0) + 1
        elif f.get("phase") == "inventory" and info["inventory_started"] is None:
            info["inventory_started"] = parse_ts(o["timestamp"])
        elif f.get("message") == "started" and "step" in f:
            t = parse_ts(o["timestamp"])
            info["step_started"].setdefault(f["step"], t)
            if info["first_step_started"] is None or t < info["first_step_started"]:
                info["first_step_started"] = t
        elif "outcome" in f and "step" in f:
            t = parse_ts(o["timestamp"])
            info["step_finished"][f["step"]] = t
            if f.get("outcome") != "skipped" and f["step"] != "prune":
                info["last_step_finished"] = max(info.get("last_step_finished") or t, t)
            if info["first_step_started"] is None or t < info["first_step_started"]:
                # A step skipped by --only never logs `started`.
                info["first_step_started"] = t
    # The inventory phase: from its message to the first step; the prune phase: from the last
    # step's end to the prune row's.
    if info["inventory_started"] and info["first_step_started"]:
        info["inventory_seconds"] = info["first_step_started"] - info["inventory_started"]
    if "prune" in info["step_finished"] and info.get("last_step_finished"):
        info["prune_seconds"] = info["step_finished"]["prune"] - info["last_step_finished"]
    return info


def applyset_request(verb: str, url: str) -> str | None:
    """Which of the ApplySet's requests this is (src/kube/applyset.rs, src/steps/prune.rs):
    the parent read or written, a member LIST (by the part-of label), the LIST of the helm
    releases the plan installed, a prune's delete."""
    path, _, query = url.partition("?")
    if re.search(r"/namespaces/kube-system/secrets/bookinfo-up\.[^/]+$", path):
        return f"parent {verb}"
    if verb == "GET" and "applyset.kubernetes.io%2Fpart-of" in query:
        return "member LIST"
    if verb == "GET" and "owner%3Dhelm" in query and "bookinfo-up.io%2Fplan" in query:
        return "release LIST"
    if verb == "DELETE":
        return "DELETE"
    return None


def read_kubectl_run(r: dict) -> dict:
    """kubectl -v=6 logs one `"Response" verb=... url=...` line per request; baseline.sh
    notes when its `kubectl rollout status` commands begin."""
    by_verb: dict[str, int] = {}
    n = 0
    nonres = 0
    rollout_started = None
    for line in Path(r["stderr"]).read_text(errors="replace").splitlines():
        if line.startswith("rollout-status-begins "):
            rollout_started = float(line.split()[1].replace(",", "."))
            continue
        m = re.search(r'"Response" verb="(\w+)" url="([^"]*)"', line)
        if not m:
            continue
        verb = "WATCH" if "watch=true" in m.group(2) else m.group(1)
        by_verb[verb] = by_verb.get(verb, 0) + 1
        n += 1
        nonres += non_resource(m.group(2))
    return {"requests": n, "requests_by_verb": by_verb, "non_resource": nonres,
            "step_started": {"rollout": rollout_started}, "step_finished": {"rollout": r["t_end"]}}


# --- the bench ---------------------------------------------------------------------------------


class Bench:
    def __init__(self, args):
        self.args = args
        self.work = Path(args.work or tempfile.mkdtemp(prefix="bookinfo-bench-"))
        self.work.mkdir(parents=True, exist_ok=True)
        (self.work / "runs").mkdir(exist_ok=True)
        self.state = self.work / "state"
        self.env = dict(os.environ)
        self.env["BOOKINFO_UP_STATE_DIR"] = str(self.state)
        self.env["KUBECACHEDIR"] = str(self.work / "kubectl-cache")
        self.env["NO_COLOR"] = "1"
        self.env.pop("KUBECONFIG", None)
        self.kubeconfig = self.state / "clusters/bookinfo-sim/kubeconfig"
        self.manifests = self.work / "manifests"
        self.counter = 0
        self.results = {"runs": []}

    # helpers

    def kubectl(self, *args, check=True):
        r = subprocess.run(["kubectl", "--kubeconfig", str(self.kubeconfig), *args],
                           env=self.env, capture_output=True, text=True)
        if check and r.returncode != 0:
            raise RuntimeError(f"kubectl {' '.join(args)} failed:\n{r.stderr}")
        return r.stdout

    def files(self, label):
        self.counter += 1
        base = self.work / "runs" / f"{self.counter:03d}-{label}"
        return base.with_suffix(".out"), base.with_suffix(".err")

    def run_a(self, label, plan=PLAN_A, existing=True, sample_hwm=False, extra=(), path=None):
        env = dict(self.env)
        if path:
            env["PATH"] = path
        env["BOOKINFO_UP_LOG"] = "warn,bookinfo_up=info,kube_client=debug"
        argv = [UP, plan, "--output", "json", "--log-format", "json", *extra]
        if existing:
            argv += ["--kubeconfig", self.kubeconfig]
        out, err = self.files(label)
        r = measure(argv, env, out, err, sample_hwm=sample_hwm)
        r.update(read_engine_run(r))
        if r["rc"] != 0:
            raise RuntimeError(f"{label}: bookinfo-up exited {r['rc']}; see {err}")
        return r

    def run_b(self, label):
        env = dict(self.env)
        env["KUBECONFIG"] = str(self.kubeconfig)
        env["BENCH_KUBECTL_V"] = "6"
        out, err = self.files(label)
        r = measure(["bash", BASELINE, self.manifests], env, out, err)
        r.update(read_kubectl_run(r))
        if r["rc"] != 0:
            raise RuntimeError(f"{label}: baseline.sh exited {r['rc']}; see {err}")
        return r

    def timed(self, side, scenario, label, watch=False):
        """One timed run with the API scrapes around it and, for cold and drift, the
        readiness watch."""
        w = ReadyWatch(self.api).start() if watch else None
        before = self.api.requests_total()
        r = self.run_a(label) if side == "A" else self.run_b(label)
        after = self.api.requests_total()
        r["apiserver"] = metrics_delta(before, after)
        if w:
            # Let the watch deliver what happened up to the tool's exit.
            time.sleep(0.3)
            tl = w.timeline()
            w.stop()
            if tl["waiting"]:
                raise RuntimeError(f"{label}: not rolled out after the run: {tl['waiting']}")
            last = tl["last_ready"]
            # From the later of "the last Deployment rolled out" and "the rollout step
            # started" to the step's end: what the waiting itself adds.
            begun = max(last, r["step_started"].get("rollout") or last)
            r["ready_after"] = last - r["t_start"]
            r["detect_latency"] = r["step_finished"]["rollout"] - begun
            if tl["last_changed"] is not None:
                # Until the tool had submitted the last Deployment change, then the cluster's
                # own time to roll it (and any earlier one) out.
                r["submitted_after"] = tl["last_changed"] - r["t_start"]
                r["cluster_rollout"] = last - tl["last_changed"]
        r.update(side=side, scenario=scenario, label=label)
        self.results["runs"].append(r)
        return r

    # cluster state

    def render(self):
        """Side B's files: the plan's manifests with its variables, the addons checked against
        its pins."""
        plan = tomllib.loads(PLAN_A.read_text())
        values = {}
        for line in VERSIONS.read_text().splitlines():
            m = re.fullmatch(r"([A-Z_][A-Z0-9_]*)=(.*)", line.strip())
            if m:
                values[m.group(1)] = m.group(2)

        def interp(text: str) -> str:
            def one(m):
                name = m.group(1)
                if name.startswith("env."):
                    var, _, default = name[4:].partition(":-")
                    return os.environ.get(var) or default
                return interp(str(values[name]))
            return re.sub(r"\$\{([^}]+)\}", one, text)

        for k, v in plan["vars"].items():
            values[k] = interp(str(v))
        if self.manifests.exists():
            shutil.rmtree(self.manifests)
        for sub in ("bookinfo", "istio", "addons"):
            (self.manifests / sub).mkdir(parents=True)
        for f in (ROOT / "manifests/bookinfo").glob("*.yaml"):
            (self.manifests / "bookinfo" / f.name).write_text(interp(f.read_text()))
        for name in ("bookinfo-gateway", "kiali-gateway", "ingress-ports"):
            src = ROOT / f"manifests/istio/{name}.yaml"
            (self.manifests / "istio" / src.name).write_text(interp(src.read_text()))
        addons = next(s for s in plan["step"] if s["id"] == "addons")["apply"]["urls"]
        for u in addons:
            path = Path(urlparse(interp(u["url"])).path)
            data = path.read_bytes()
            if hashlib.sha256(data).hexdigest() != u["sha256"]:
                raise RuntimeError(f"{path}: sha256 differs from the plan's pin")
            (self.manifests / "addons" / path.name).write_bytes(data)

    def kiali_patch_from_cluster(self):
        """B patches config.yaml to what the engine merged (read back after an A run), so both
        sides converge to the same ConfigMap."""
        cm = self.api.get("/api/v1/namespaces/istio-system/configmaps/kiali")
        content = cm["data"]["config.yaml"]
        if "grafana.istio-system.svc.cluster.local:3000" not in content:
            raise RuntimeError("the kiali ConfigMap does not hold the Grafana settings")
        (self.manifests / "kiali-configmap-patch.json").write_text(
            json.dumps({"data": {"config.yaml": content}}))

    def svc_path(self):
        return "/api/v1/namespaces/istio-system/services/istio-ingressgateway"

    def remove_added_ports(self):
        """A hand edit of the Service: the two ports the seed adds, taken out."""
        svc = self.api.get(self.svc_path())
        ports = [p for p in svc["spec"]["ports"] if p.get("name") not in ADDED_PORTS]
        if len(ports) != len(svc["spec"]["ports"]):
            self.api.patch(self.svc_path() + "?fieldManager=bench-hand-edit",
                           [{"op": "replace", "path": "/spec/ports", "value": ports}],
                           "application/json-patch+json")

    def ports_present(self) -> bool:
        svc = self.api.get(self.svc_path())
        return ADDED_PORTS <= {p.get("name") for p in svc["spec"]["ports"]}

    def clean(self):
        """Deletes what a run creates and waits until it is gone (untimed). Bookinfo's objects
        go before their namespace: the namespace controller waits 5 s before it empties a
        namespace, and finds nothing left to wait for then."""
        m = self.manifests
        self.kubectl("-n", "bookinfo", "delete", "--ignore-not-found", "--wait=false",
                     "-f", str(m / "bookinfo"), "-f", str(m / "istio/bookinfo-gateway.yaml"))
        self.kubectl("-n", "istio-system", "delete", "--ignore-not-found", "--wait=false",
                     "-f", str(m / "addons"), "-f", str(m / "istio/kiali-gateway.yaml"))
        self.kubectl("delete", "namespace", "bookinfo", "--ignore-not-found", "--wait=false")
        self.remove_added_ports()
        deadline = time.time() + 300
        while True:
            ns = self.api.get("/api/v1/namespaces/bookinfo")
            left = []
            for kind, path in (("pods", "/api/v1/namespaces/istio-system/pods"),
                               ("replicasets", "/apis/apps/v1/namespaces/istio-system/replicasets"),
                               ("deployments", "/apis/apps/v1/namespaces/istio-system/deployments")):
                for o in self.api.get(path)["items"]:
                    if o["metadata"]["name"].startswith(ADDONS):
                        left.append(f"{kind}/{o['metadata']['name']}")
            if ns is None and not left:
                return
            if time.time() > deadline:
                raise RuntimeError(f"cleanup did not finish: namespace bookinfo "
                                   f"{'present' if ns else 'gone'}, {left[:5]}")
            time.sleep(0.2)

    def wait_rolled_out(self, ns, name, timeout=120):
        deadline = time.time() + timeout
        while time.time() < deadline:
            d = self.api.get(f"/apis/apps/v1/namespaces/{ns}/deployments/{name}")
            if d and rolled_out(d):
                return d
            time.sleep(0.1)
        raise RuntimeError(f"deployment {ns}/{name} did not roll out")

    def drift(self):
        """By hand: another image for one Deployment (waited until rolled out) and the two
        added ports taken out of the ingress gateway's Service."""
        ns, name = DRIFT_DEPLOYMENT
        path = f"/apis/apps/v1/namespaces/{ns}/deployments/{name}"
        d = self.api.get(path)
        image = d["spec"]["template"]["spec"]["containers"][0]["image"]
        drifted = image.rsplit(":", 1)[0] + ":drifted"
        self.api.patch(path + "?fieldManager=bench-hand-edit",
                       [{"op": "replace", "path": "/spec/template/spec/containers/0/image",
                         "value": drifted}], "application/json-patch+json")
        self.remove_added_ports()
        self.wait_rolled_out(ns, name)
        return image

    def check_restored(self, image, label):
        ns, name = DRIFT_DEPLOYMENT
        d = self.wait_rolled_out(ns, name)
        now = d["spec"]["template"]["spec"]["containers"][0]["image"]
        if now != image or not self.ports_present():
            raise RuntimeError(f"{label}: drift not repaired (image {now}, ports "
                               f"{'present' if self.ports_present() else 'missing'})")

    # scenarios

    def sim(self):
        log("sim plan, cold: creates the kwok cluster and installs the Helm releases")
        r = self.run_a("sim-cold", plan=PLAN_SIM, existing=False, sample_hwm=True)
        r.update(side="A", scenario="sim-cold", label="sim-cold")
        self.results["runs"].append(r)
        log(f"  {r['seconds']:.2f} s")
        self.api = Api(self.kubeconfig, self.work)
        before = self.api.requests_total()
        time.sleep(self.args.idle)
        after = self.api.requests_total()
        self.results["background_rps"] = metrics_delta(before, after)["total"] / self.args.idle
        # helm, spied on: a script first on PATH notes each call and runs the real one.
        spy = self.work / "spy"
        spy.mkdir(exist_ok=True)
        calls = self.work / "helm-calls"
        calls.write_text("")
        (spy / "helm").write_text(f"#!/bin/sh\necho \"$*\" >> '{calls}'\n"
                                  f"exec '{shutil.which('helm')}' \"$@\"\n")
        (spy / "helm").chmod(0o755)
        spied = f"{spy}:{self.env.get('PATH', '')}"
        for i in range(self.args.sim_runs):
            before = self.api.requests_total()
            seen = len(calls.read_text().splitlines())
            r = self.run_a(f"sim-noop-{i + 1}", plan=PLAN_SIM, existing=False, sample_hwm=True,
                           path=spied)
            after = self.api.requests_total()
            r["helm_processes"] = len(calls.read_text().splitlines()) - seen
            r["apiserver"] = metrics_delta(before, after)
            r.update(side="A", scenario="sim-noop", label=f"sim-noop-{i + 1}")
            changed = [s for s, v in r["steps"].items() if v["outcome"] != "unchanged"]
            r["not_noop"] = changed
            self.results["runs"].append(r)
            log(f"  sim no-op {i + 1}: {r['seconds']:.3f} s, own VmHWM {r['hwm_mb']:.1f} MB, "
                f"{r['requests']} own API requests, {r['apiserver']['total']} at the apiserver "
                f"(all clients), {r['helm_processes']} helm processes"
                + (f", CHANGED {changed}" if changed else ""))

    def prune_cost(self):
        """What the ApplySet and the prune add to the sim plan's no-op: runs of the plan
        alternating with runs of the same plan with `[prune] enabled = false` (no set read,
        written or pruned), on the same converged cluster. Also, from the runs with the set,
        its own requests (the client's trace) and the two phases' times (the JSON log)."""
        log("prune cost: the sim plan's no-op with its ApplySet and without")
        text = PLAN_SIM.read_text()
        shared = PLAN_SIM.parent / "shared/bookinfo-flow.toml"
        if '"shared/bookinfo-flow.toml"' not in text:
            raise RuntimeError("plans/sim.toml no longer includes shared/bookinfo-flow.toml")
        off = self.work / "sim-no-prune.toml"
        off.write_text(text.replace('"shared/bookinfo-flow.toml"', json.dumps(str(shared)))
                       + "\n[prune]\nenabled = false\n")
        for i in range(self.args.pairs):
            for side, plan in (("A", PLAN_SIM), ("B", off)):
                label = f"prune-{'on' if side == 'A' else 'off'}-{i + 1}"
                before = self.api.requests_total()
                r = self.run_a(label, plan=plan, existing=False)
                r["apiserver"] = metrics_delta(before, self.api.requests_total())
                r.update(side=side, scenario="prune-cost", label=label,
                         not_noop=[k for k, v in r["steps"].items() if v["outcome"] != "unchanged"])
                self.results["runs"].append(r)
                log(f"  {label}: {r['seconds'] * 1000:.0f} ms, {r['requests']} own requests "
                    f"({r['applyset']}), inventory {ms(r.get('inventory_seconds'))}, prune "
                    f"{ms(r.get('prune_seconds'))}")
        parent = self.api.get("/api/v1/namespaces/kube-system/secrets/bookinfo-up.bookinfo-sim")
        notes = (parent or {}).get("metadata", {}).get("annotations", {})
        kinds = [k for k in notes.get("applyset.kubernetes.io/contains-group-kinds", "").split(",") if k]
        spaces = [n for n in notes.get("applyset.kubernetes.io/additional-namespaces", "").split(",") if n]
        self.results["applyset_parent"] = {"group_kinds": kinds, "namespaces": spaces}

    def prepare_ab(self):
        log("A/B: rendering side B's manifests; warm-up runs (untimed)")
        self.render()
        self.clean()
        self.run_a("warmup-a")
        self.kiali_patch_from_cluster()
        self.run_b("warmup-b")

    def pair_line(self, scenario, i, a, b):
        extra = ""
        if a.get("detect_latency") is not None:
            extra = (f"; last Deployment submitted at {a.get('submitted_after', 0):.2f}/"
                     f"{b.get('submitted_after', 0):.2f} s, rolled out at {a['ready_after']:.2f}/"
                     f"{b['ready_after']:.2f} s, detected {a['detect_latency'] * 1000:+.0f}/"
                     f"{b['detect_latency'] * 1000:+.0f} ms")
        log(f"  {scenario} pair {i}: A {a['seconds']:.3f} s, B {b['seconds']:.3f} s, "
            f"B/A {b['seconds'] / a['seconds']:.1f}x; requests A {a['requests']} / "
            f"B {b['requests']} (apiserver {a['apiserver']['total']}/{b['apiserver']['total']})"
            + extra)

    def cold(self, scenario="cold"):
        log(f"{scenario}: {self.args.pairs} pairs")
        for i in range(1, self.args.pairs + 1):
            pair = {}
            for side in ("A", "B"):
                self.clean()
                pair[side] = self.timed(side, scenario, f"{scenario}-{i}-{side}", watch=True)
            self.pair_line(scenario, i, pair["A"], pair["B"])

    def own_state(self, side, label):
        """The state a side's no-op or drift starts from, untimed: what the side itself made,
        not what the other side left (bookinfo-up never takes over objects it did not create,
        so over kubectl's objects it would read and dry-run each, as on a cluster it does not
        manage). The objects deleted, the side run twice: once to create them, once more
        after they rolled out, which for bookinfo-up records their settled state."""
        self.clean()
        for n in (1, 2):
            (self.run_a if side == "A" else self.run_b)(f"{label}-{side}-prep{n}")

    def noop(self):
        log(f"no-op: {self.args.pairs} pairs")
        for i in range(1, self.args.pairs + 1):
            pair = {}
            for side in ("A", "B"):
                self.own_state(side, f"noop-{i}")
                r = self.timed(side, "noop", f"noop-{i}-{side}")
                if side == "A":
                    r["not_noop"] = [s for s, v in r["steps"].items() if v["outcome"] != "unchanged"]
                pair[side] = r
            self.pair_line("no-op", i, pair["A"], pair["B"])

    def drift_runs(self):
        log(f"drift: {self.args.pairs} pairs")
        for i in range(1, self.args.pairs + 1):
            pair = {}
            for side in ("A", "B"):
                self.own_state(side, f"drift-{i}")
                image = self.drift()
                pair[side] = self.timed(side, "drift", f"drift-{i}-{side}", watch=True)
                self.check_restored(image, f"drift-{i}-{side}")
            self.pair_line("drift", i, pair["A"], pair["B"])

    def diff_runs(self):
        """`bookinfo-up diff` of the full sim plan (A) against `kubectl diff --server-side` over
        the plan's rendered manifests (B), both on the converged sim cluster."""
        log(f"diff: {self.args.pairs} pairs, on the converged sim plan's cluster")
        self.render()
        files = [a for f in sorted(self.manifests.rglob("*.yaml")) for a in ("-f", str(f))]
        sides = {
            "A": [UP, "diff", PLAN_SIM, "--color", "never"],
            "B": ["kubectl", "--kubeconfig", str(self.kubeconfig), "diff", "--server-side",
                  "--force-conflicts", *files],
        }
        for i in range(1, self.args.pairs + 1):
            pair = {}
            for side in ("A", "B"):
                label = f"diff-{i}-{side}"
                out, err = self.files(label)
                before = self.api.requests_total()
                r = measure(sides[side], self.env, out, err)
                r["apiserver"] = metrics_delta(before, self.api.requests_total())
                # A: 0, the cluster is converged. B: 0 or 1 (kubectl diff's "differences":
                # the addon's Kiali ConfigMap, which the plan merges into, differs).
                if (side == "A" and r["rc"] != 0) or r["rc"] > 1:
                    raise RuntimeError(f"{label}: exited {r['rc']}; see {err}")
                r.update(side=side, scenario="diff", label=label)
                self.results["runs"].append(r)
                pair[side] = r
            a, b = pair["A"], pair["B"]
            log(f"  diff pair {i}: A {a['seconds']:.3f} s (exit {a['rc']}), B {b['seconds']:.3f} s "
                f"(exit {b['rc']}), B/A {b['seconds'] / a['seconds']:.1f}x; apiserver requests "
                f"{a['apiserver']['total']}/{b['apiserver']['total']}")

    def teardown(self, failed=False):
        """Deletes the sim plan's cluster (and the unthrottled one, if any), and the work
        folder unless a run failed (its logs say why)."""
        if self.args.keep:
            log(f"kept: {self.work} (`BOOKINFO_UP_STATE_DIR={self.state} "
                f"target/release/bookinfo-down plans/sim.toml` removes the cluster; "
                f"`KWOK_WORKDIR={self.work}/kwok-unthrottled kwokctl delete cluster "
                f"--name {UNTHROTTLED}` the unthrottled one)")
            return
        log("deleting the bench cluster")
        subprocess.run([DOWN, PLAN_SIM, "-q"], env=self.env, cwd=ROOT, check=False)
        self.delete_unthrottled()
        if failed:
            log(f"logs of every run kept in {self.work / 'runs'}")
        else:
            shutil.rmtree(self.work, ignore_errors=True)

    # The supplement: cold on a cluster whose controller-manager is not rate-limited.

    def unthrottled_env(self):
        env = dict(self.env)
        env["KWOK_WORKDIR"] = str(self.work / "kwok-unthrottled")
        return env

    def unthrottled(self):
        """kube-controller-manager's client is limited to 20 requests/s (burst 30) by default;
        creating twelve Deployments at once exhausts it, and their rollouts then wait on it. The
        same cold pairs on a cluster made with --kube-api-qps=1000 show the tools without that
        floor. The cluster is made with kwokctl directly (the plan format has no
        controller-manager arguments) and filled by `bookinfo-up plans/sim.toml --kubeconfig`."""
        log("unthrottled cluster: kwokctl create, then plans/sim.toml over it (untimed)")
        kc = self.work / "unthrottled.kubeconfig"
        # kwokctl picks ports counting down from 32767, avoiding only the clusters of its own
        # work folder; ports from the kernel cannot collide with other clusters on the machine
        # (as in src/provider/kwok.rs).
        config = kwokctl_ports(self.work / "unthrottled-ports.yaml")
        subprocess.run(
            ["kwokctl", "--config", str(config), "create", "cluster", "--name", UNTHROTTLED,
             "--runtime", "binary",
             "--wait", "120s", "--kubeconfig", str(kc),
             "--extra-args", "kube-apiserver=disable-admission-plugins=MutatingAdmissionWebhook,"
             "ValidatingAdmissionWebhook,ValidatingAdmissionPolicy",
             "--extra-args", "kube-controller-manager=kube-api-qps=1000",
             "--extra-args", "kube-controller-manager=kube-api-burst=2000"],
            env=self.unthrottled_env(), check=True, capture_output=True)
        self.kubeconfig = kc
        node = tempfile.NamedTemporaryFile("w", suffix=".json", dir=self.work, delete=False)
        json.dump(KWOK_NODE, node)
        node.close()
        self.kubectl("apply", "-f", node.name)
        # This hand-made cluster runs no istiod (webhooks off): the two checks that need one
        # are left out of the install; the timed runs (seed-steps) have neither.
        r = self.run_a("unthrottled-install", plan=PLAN_SIM,
                       extra=("--skip", "webhook-ready", "--skip", "bookinfo-pods"))
        if r["rc"] != 0:
            raise RuntimeError("plans/sim.toml failed on the unthrottled cluster")
        self.api = Api(kc, self.work)
        self.clean()
        self.run_a("unthrottled-warmup-a")
        self.run_b("unthrottled-warmup-b")
        self.cold("cold-unthrottled")

    def delete_unthrottled(self):
        if (self.work / "kwok-unthrottled").exists():
            subprocess.run(["kwokctl", "delete", "cluster", "--name", UNTHROTTLED],
                           env=self.unthrottled_env(), check=False, capture_output=True)


# --- the report --------------------------------------------------------------------------------


SECTION = "<!-- bench-section:{} -->"
SECTION_END = "<!-- /bench-section:{} -->"


def write_section(path: Path, name: str, text: str):
    """Puts `text` into results.md as its section `name`, between markers, and leaves the other
    sections as they are (`just bench` writes `seed`, `just bench scale` writes `scale`; other
    benches may add theirs). A file without markers is an older `just bench` report: it is
    kept as the `seed` section."""
    old = path.read_text() if path.exists() else ""
    if old and "<!-- bench-section:" not in old:
        old = f"{SECTION.format('seed')}\n{old.rstrip()}\n{SECTION_END.format('seed')}\n"
    block = f"{SECTION.format(name)}\n{text.rstrip()}\n{SECTION_END.format(name)}\n"
    begin, end = SECTION.format(name), SECTION_END.format(name)
    if begin in old and end in old:
        head, rest = old.split(begin, 1)
        tail = rest.split(end, 1)[1].lstrip("\n")
        new = head + block + ("\n" + tail if tail else "")
    else:
        new = (old.rstrip() + "\n\n" if old else "") + block
    path.write_text(new)



def machine() -> dict:
    cpu = next((l.split(":", 1)[1].strip() for l in Path("/proc/cpuinfo").read_text().splitlines()
                if l.startswith("model name")), platform.processor())
    mem = subprocess.run(["free", "-h"], capture_output=True, text=True).stdout
    total = next((l.split()[1] for l in mem.splitlines() if l.startswith("Mem:")), "?")
    load = os.getloadavg()
    return {"cpus": os.cpu_count(), "nproc": subprocess.run(["nproc"], capture_output=True,
            text=True).stdout.strip(), "cpu": cpu, "memory": total,
            "kernel": platform.release(), "os": _os_name(),
            "loadavg_at_end": [round(x, 2) for x in load]}


def _os_name():
    try:
        for line in Path("/etc/os-release").read_text().splitlines():
            if line.startswith("PRETTY_NAME="):
                return line.split("=", 1)[1].strip('"')
    except OSError:
        pass
    return platform.platform()


def versions() -> dict:
    v = {}
    for line in VERSIONS.read_text().splitlines():
        m = re.fullmatch(r"([A-Z_][A-Z0-9_]*)=(.*)", line.strip())
        if m and m.group(1) in ("KUBERNETES_VERSION", "ETCD_VERSION", "KWOK_VERSION",
                                "HELM_VERSION", "ISTIO_VERSION", "ISTIO_COMMIT"):
            v[m.group(1)] = m.group(2)

    def out(*cmd):
        try:
            return subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT).stdout.strip()
        except OSError:
            return "?"
    v["bookinfo-up"] = out(str(UP), "--version")
    v["git"] = out("git", "describe", "--always", "--dirty")
    v["kubectl"] = out("kubectl", "version", "--client", "-o", "json")
    try:
        v["kubectl"] = json.loads(v["kubectl"])["clientVersion"]["gitVersion"]
    except (json.JSONDecodeError, KeyError):
        pass
    v["python"] = platform.python_version()
    return v


SCENARIOS = {"cold": "cold", "noop": "no-op", "drift": "drift",
             "cold-unthrottled": "cold, unthrottled controller-manager"}


def summarize(results: dict) -> dict:
    runs = results["runs"]
    s = {}
    for scenario in SCENARIOS:
        a = [r for r in runs if r["scenario"] == scenario and r["side"] == "A"]
        b = [r for r in runs if r["scenario"] == scenario and r["side"] == "B"]
        if not a or not b:
            continue
        pairs = list(zip(a, b))

        def both(key, xs=None):
            return (median([r.get(key) for r in a]), median([r.get(key) for r in b]))
        s[scenario] = {
            "a_median": median([r["seconds"] for r in a]),
            "b_median": median([r["seconds"] for r in b]),
            "speedup_median": median([y["seconds"] / x["seconds"] for x, y in pairs]),
            "pairs": [{"a": x["seconds"], "b": y["seconds"], "b_over_a": y["seconds"] / x["seconds"],
                       "a_over_b": x["seconds"] / y["seconds"],
                       "requests": (x["requests"], y["requests"]),
                       "apiserver": (x["apiserver"]["total"], y["apiserver"]["total"]),
                       "latency": (x.get("detect_latency"), y.get("detect_latency")),
                       "submitted": (x.get("submitted_after"), y.get("submitted_after")),
                       "rss": (x["maxrss_mb"], y["maxrss_mb"])}
                      for x, y in pairs],
            "requests": (median([r["requests"] for r in a]), median([r["requests"] for r in b])),
            "apiserver": (median([r["apiserver"]["total"] for r in a]),
                          median([r["apiserver"]["total"] for r in b])),
            "latency": both("detect_latency"),
            "ready_after": both("ready_after"),
            "submitted": both("submitted_after"),
            "cluster_rollout": both("cluster_rollout"),
            "non_resource": (median([r["non_resource"] for r in a]),
                             median([r["non_resource"] for r in b])),
            "by_verb": (a[-1]["requests_by_verb"], b[-1]["requests_by_verb"]),
            "a_startup": median([r["first_step_started"] - r["t_start"] for r in a
                                 if r.get("first_step_started")]),
            "a_rss_max": max(r["maxrss_mb"] for r in a),
            "a_rss_median": median([r["maxrss_mb"] for r in a]),
            "b_rss_max": max(r["maxrss_mb"] for r in b),
            "a_steps": {sid: median([r["steps"][sid]["elapsed"] for r in a if sid in r["steps"]])
                        for sid in a[0]["steps"]},
            "not_noop": sorted({x for r in a for x in r.get("not_noop", [])}),
        }
    sim = [r for r in runs if r["scenario"] == "sim-noop"]
    if sim:
        s["sim"] = {
            "median": median([r["seconds"] for r in sim]),
            "runs": [r["seconds"] for r in sim],
            "hwm_max": max(r["hwm_mb"] for r in sim),
            "maxrss_with_children": max(r["maxrss_mb"] for r in sim),
            "apiserver": median([r["apiserver"]["total"] for r in sim]),
            "engine_requests": median([r["requests"] for r in sim]),
            "engine_non_resource": median([r["non_resource"] for r in sim]),
            "helm_processes": max((r.get("helm_processes") or 0) for r in sim),
            "provider_phase": median([r["first_step_started"] - r["t_start"] for r in sim
                                      if r["first_step_started"]]),
            "steps_phase": median([r["t_end"] - r["first_step_started"] for r in sim
                                   if r["first_step_started"]]),
            "helm_chain": median([sum(r["steps"][k]["elapsed"] for k in HELM_STEPS if k in r["steps"])
                                  for r in sim]),
            "steps": {sid: median([r["steps"][sid]["elapsed"] for r in sim if sid in r["steps"]])
                      for sid in sim[0]["steps"]},
            "not_noop": sorted({x for r in sim for x in r.get("not_noop", [])}),
        }
    on = [r for r in runs if r["scenario"] == "prune-cost" and r["side"] == "A"]
    off = [r for r in runs if r["scenario"] == "prune-cost" and r["side"] == "B"]
    if on and off:
        parent = results.get("applyset_parent", {"group_kinds": [], "namespaces": []})
        kinds = {k for r in on for k in r["applyset"]}
        s["prune"] = {
            "on": median([r["seconds"] for r in on]),
            "off": median([r["seconds"] for r in off]),
            "added": median([x["seconds"] - y["seconds"] for x, y in zip(on, off)]),
            "requests_on": median([r["requests"] for r in on]),
            "requests_off": median([r["requests"] for r in off]),
            "apiserver_on": median([r["apiserver"]["total"] for r in on]),
            "apiserver_off": median([r["apiserver"]["total"] for r in off]),
            "applyset": {k: max(r["applyset"].get(k, 0) for r in on) for k in sorted(kinds)},
            "inventory": median([r.get("inventory_seconds") for r in on]),
            "prune": median([r.get("prune_seconds") for r in on]),
            "group_kinds": len(parent["group_kinds"]),
            "namespaces": len(parent["namespaces"]),
            "not_noop": sorted({x for r in on + off for x in r.get("not_noop", [])}),
        }
    diff = [r for r in runs if r["scenario"] == "diff"]
    if diff:
        a = [r for r in diff if r["side"] == "A"]
        b = [r for r in diff if r["side"] == "B"]
        s["diff"] = {
            "a_median": median([r["seconds"] for r in a]),
            "b_median": median([r["seconds"] for r in b]),
            "speedup_median": median([y["seconds"] / x["seconds"] for x, y in zip(a, b)]),
            "pairs": [{"a": x["seconds"], "b": y["seconds"], "b_over_a": y["seconds"] / x["seconds"],
                       "rc": (x["rc"], y["rc"]),
                       "apiserver": (x["apiserver"]["total"], y["apiserver"]["total"])}
                      for x, y in zip(a, b)],
        }
    cold_sim = [r for r in runs if r["scenario"] == "sim-cold"]
    if cold_sim:
        s["sim_cold"] = cold_sim[0]["seconds"]
        s["sim_cold_hwm"] = cold_sim[0]["hwm_mb"]
    rss = [r["maxrss_mb"] for r in runs if r["side"] == "A" and r["scenario"] in SCENARIOS]
    rss += [r["hwm_mb"] for r in runs if r["scenario"] in ("sim-noop", "sim-cold") and r["hwm_mb"]]
    s["rss_max"] = max(rss) if rss else None
    return s


def verdicts(s: dict) -> list[tuple[str, str, bool]]:
    t = TARGETS
    out = []
    if "noop" in s:
        out.append((f"no-op ≥ {t['noop_speedup']:.0f}× faster than kubectl",
                    f"{s['noop']['speedup_median']:.1f}×", s["noop"]["speedup_median"] >= t["noop_speedup"]))
        out.append((f"no-op under {t['noop_seconds']} s", f"{s['noop']['a_median']:.3f} s",
                    s["noop"]["a_median"] < t["noop_seconds"]))
    if "cold" in s:
        got = f"{s['cold']['speedup_median']:.2f}×"
        if "cold-unthrottled" in s:
            got += f" ({s['cold-unthrottled']['speedup_median']:.2f}× with the controller-manager unthrottled)"
        out.append((f"cold ≥ {t['cold_speedup']:.0f}× faster", got,
                    s["cold"]["speedup_median"] >= t["cold_speedup"]))
    if "sim" in s:
        out.append((f"full sim plan no-op under {t['sim_noop_seconds'] * 1000:.0f} ms",
                    f"{s['sim']['median'] * 1000:.0f} ms", s["sim"]["median"] < t["sim_noop_seconds"]))
        out.append((f"full sim plan no-op in ≤ {t['sim_noop_requests']} API requests (own trace)",
                    f"{s['sim']['engine_requests']:.0f} ({s['sim']['apiserver']:.0f} at the apiserver)",
                    s["sim"]["engine_requests"] <= t["sim_noop_requests"]))
        helm = s["sim"].get("helm_processes")
        if helm is not None:
            out.append(("full sim plan no-op runs no helm process", f"{helm} helm processes",
                        helm == 0))
    if "prune" in s:
        x = s["prune"]
        lists = x["applyset"].get("member LIST", 0)
        out.append(("prune on a no-op: ≤ 1 member LIST per group-kind and namespace of the set",
                    f"{lists} LISTs for {x['group_kinds']} group-kinds in "
                    f"{x['namespaces']} namespaces", lists <= x["group_kinds"] * max(1, x["namespaces"])))
        out.append((f"what the ApplySet and the prune add to a no-op: ≤ {t['prune_ms']:.0f} ms "
                    "(the run with them against the same run without, pair by pair)",
                    f"{x['added'] * 1000:+.0f} ms ({x['requests_on'] - x['requests_off']:+.0f} "
                    "requests)", x["added"] * 1000 <= t["prune_ms"]))
        phases = (x["inventory"] or 0) + (x["prune"] or 0)
        out.append((f"the set's own phases on a no-op: ≤ {t['prune_ms']:.0f} ms (inventory and "
                    "prune; the member LISTs are also the ledger's check)",
                    f"{phases * 1000:.1f} ms (inventory {ms(x['inventory'])}, prune "
                    f"{ms(x['prune'])})", phases * 1000 <= t["prune_ms"]))
    if "diff" in s:
        out.append((f"diff of the full sim plan ≥ {t['diff_speedup']:.0f}× faster than "
                    "`kubectl diff --server-side`", f"{s['diff']['speedup_median']:.1f}×",
                    s["diff"]["speedup_median"] >= t["diff_speedup"]))
    if s.get("rss_max") is not None:
        out.append((f"peak RSS of bookinfo-up under {t['rss_mb']:.0f} MB", f"{s['rss_max']:.1f} MB",
                    s["rss_max"] < t["rss_mb"]))
    return out


def ms(x):
    if x is None:
        return "–"
    n = round(x * 1000)
    return f"{n} ms" if n >= 0 else f"−{-n} ms"


def sec(x, digits=2):
    return "–" if x is None else f"{x:.{digits}f} s"


def markdown(results: dict, s: dict) -> str:
    m, v = results["machine"], results["versions"]
    L = []
    L.append("# Benchmark: bookinfo-up against the seed's kubectl sequence\n")
    L.append(f"Generated by `just bench` (bench/run.py) on {results['date']}: "
             f"{results['pairs']} A/B pairs per scenario, {results['sim_runs']} no-op runs of the "
             f"sim plan; the bench took {results['bench_seconds'] / 60:.1f} min. Method, and what "
             "limits each figure: [README.md](README.md).\n")
    L.append(f"- Machine: {m['nproc']} CPUs ({m['cpu']}), {m['memory']} memory, "
             f"{m['os']}, kernel {m['kernel']}. Load average at the end: "
             f"{', '.join(str(x) for x in m['loadavg_at_end'])} (other clusters may share the CPUs).")
    L.append(f"- Versions: bookinfo-up {v['bookinfo-up'].split()[-1]} (git {v['git']}), "
             f"Kubernetes {v.get('KUBERNETES_VERSION')}, kwok {v.get('KWOK_VERSION')}, "
             f"etcd {v.get('ETCD_VERSION')}, kubectl {v['kubectl']}, helm {v.get('HELM_VERSION')}, "
             f"Istio {v.get('ISTIO_VERSION')} charts and addons (commit {v.get('ISTIO_COMMIT')}), "
             f"Python {v['python']}.")
    L.append("- Cluster: a kwok cluster (real etcd, kube-apiserver, controller-manager and "
             "scheduler; simulated kubelets) made by `bookinfo-up plans/sim.toml`"
             + (f" ({s['sim_cold']:.1f} s)" if "sim_cold" in s else "")
             + "; its three Helm releases are installed then, timed for neither side.")
    L.append("- A: `bookinfo-up plans/bench/seed-steps.toml --kubeconfig …`. B: `bench/baseline.sh`, "
             "the same steps as kubectl commands. Same rendered manifests, same cluster, runs "
             "alternating A, B, A, B; each timed from spawn to exit.\n")

    L.append("## Targets\n")
    L.append("| target | measured (median) | met |")
    L.append("|---|---|---|")
    for what, got, ok in verdicts(s):
        L.append(f"| {what} | {got} | {'yes' if ok else '**no**'} |")
    L.append("")

    L.append("## Medians\n")
    L.append("| scenario | A bookinfo-up | B kubectl | B/A | own API requests A / B | "
             "apiserver requests A / B (all clients) | last Deployment submitted A / B | "
             "cluster's rollout after that A / B | detection latency A / B |")
    L.append("|---|---|---|---|---|---|---|---|---|")
    for k, name in SCENARIOS.items():
        if k not in s:
            continue
        x = s[k]
        L.append(f"| {name} | {sec(x['a_median'], 3)} | {sec(x['b_median'], 3)} | "
                 f"**{x['speedup_median']:.1f}×** | {x['requests'][0]:.0f} ({x['non_resource'][0]:.0f}) / "
                 f"{x['requests'][1]:.0f} ({x['non_resource'][1]:.0f}) | "
                 f"{x['apiserver'][0]:.0f} / {x['apiserver'][1]:.0f} | "
                 f"{sec(x['submitted'][0])} / {sec(x['submitted'][1])} | "
                 f"{sec(x['cluster_rollout'][0])} / {sec(x['cluster_rollout'][1])} | "
                 f"{ms(x['latency'][0])} / {ms(x['latency'][1])} |")
    L.append("")
    L.append("- *B/A*: the median of the pairs' ratios (how many times faster A is).")
    L.append("- *own API requests*: bookinfo-up's, counted from its kube-client trace; kubectl's, "
             "from `-v=6`; in brackets, how many of them were discovery or OpenAPI documents "
             "(kubectl's warm disk cache answers most discovery without a request).")
    L.append("- *apiserver requests*: the change of `apiserver_request_total` over the run: the "
             "resource requests of every client, so also of the controllers, scheduler and kwok "
             "reacting to the run, and of helm "
             f"({results.get('background_rps', 0):.1f} requests/s with the cluster idle); the "
             "apiserver does not count discovery and OpenAPI requests there.")
    L.append("- *last Deployment submitted*: from the start of the run until a watch saw the last "
             "Deployment created or its spec changed; *cluster's rollout after that*: until the "
             "last Deployment was rolled out; *detection latency*: from then, or from the start "
             "of the rollout step if that is later, until the step ended (A: its `rollout` step, "
             "from its JSON log; B: its `kubectl rollout status` commands, from a mark the script "
             "prints to its exit). Host clock, sub-second, from a list+watch of Deployments "
             "started before the run; the tool's watch and the harness's see the same update, so "
             "a few milliseconds either way are noise.\n")

    for k, name in SCENARIOS.items():
        if k not in s:
            continue
        x = s[k]
        L.append(f"## {name}, pair by pair\n")
        L.append("| pair | A | B | B/A | A/B | requests A / B | apiserver A / B | "
                 "detection latency A / B | peak RSS A / B |")
        L.append("|---|---|---|---|---|---|---|---|---|")
        for i, p in enumerate(x["pairs"], 1):
            L.append(f"| {i} | {p['a']:.3f} s | {p['b']:.3f} s | {p['b_over_a']:.1f}× | "
                     f"{p['a_over_b']:.3f} | {p['requests'][0]} / {p['requests'][1]} | "
                     f"{p['apiserver'][0]} / {p['apiserver'][1]} | "
                     f"{ms(p['latency'][0])} / {ms(p['latency'][1])} | "
                     f"{p['rss'][0]:.1f} / {p['rss'][1]:.1f} MB |")
        L.append("")
        steps = ", ".join(f"{sid} {e:.3f}" for sid, e in x["a_steps"].items())
        L.append(f"A: {ms(x['a_startup'])} from spawn to the first step (start-up, plan "
                 f"analysis, pinned addons read and checked); steps, median elapsed in s: {steps}.  ")
        L.append(f"Own requests by verb in the last pair: A {x['by_verb'][0]}; B {x['by_verb'][1]}.")
        if x["not_noop"]:
            L.append(f"  \n**Not a no-op**: A changed {x['not_noop']}.")
        L.append("")

    if "sim" in s:
        x = s["sim"]
        L.append("## Full sim plan, no-op, Helm steps included\n")
        L.append(f"`bookinfo-up plans/sim.toml` over its own converged cluster, "
                 f"{len(x['runs'])} runs: median **{x['median']:.3f} s** "
                 f"({', '.join(f'{t:.3f}' for t in x['runs'])}).\n")
        L.append(f"- Before the first step: {sec(x['provider_phase'], 3)} (the kwok provider: "
                 "`kwokctl get clusters`, one API call to see the server answer and the nodes "
                 "Ready, then the fetch of the pinned addons from the cache).")
        L.append(f"- Steps: {sec(x['steps_phase'], 3)}, of which the Helm chain istio-base → "
                 f"istiod → ingress-gateway takes {sec(x['helm_chain'], 3)} (each release read "
                 "from Helm's storage Secret, no helm process; each waits for the previous one).")
        steps = ", ".join(f"{sid} {e:.3f}" for sid, e in x["steps"].items())
        L.append(f"- Each step, median elapsed in s: {steps}.")
        L.append(f"- bookinfo-up's own peak RSS (VmHWM): {x['hwm_max']:.1f} MB; with its helm and "
                 f"kwokctl children: {x['maxrss_with_children']:.1f} MB. API requests: "
                 f"{x['engine_requests']:.0f} from bookinfo-up ({x['engine_non_resource']:.0f} of "
                 f"them discovery), {x['apiserver']:.0f} resource requests at the apiserver "
                 "(helm's and the cluster's own included).")
        if x["not_noop"]:
            L.append(f"- **Not a no-op**: changed {x['not_noop']}.")
        L.append("")

    if "prune" in s:
        x = s["prune"]
        L.append("## What the ApplySet and the prune add to a no-op\n")
        L.append(f"The sim plan's no-op, {len([r for r in results['runs'] if r['scenario'] == 'prune-cost']) // 2} "
                 "times with its ApplySet (as shipped) alternating with the same plan and "
                 "`[prune] enabled = false` (no set read, written or pruned), on the same "
                 "converged cluster.\n")
        L.append("| | with the set | without | difference |")
        L.append("|---|---|---|---|")
        L.append(f"| run, median | {sec(x['on'], 3)} | {sec(x['off'], 3)} | {x['added'] * 1000:+.0f} ms "
                 "(median of the pairs) |")
        L.append(f"| own API requests | {x['requests_on']:.0f} | {x['requests_off']:.0f} | "
                 f"{x['requests_on'] - x['requests_off']:+.0f} |")
        L.append(f"| apiserver requests (all clients) | {x['apiserver_on']:.0f} | "
                 f"{x['apiserver_off']:.0f} | {x['apiserver_on'] - x['apiserver_off']:+.0f} |")
        L.append("")
        got = ", ".join(f"{n} {k}" for k, n in x["applyset"].items()) or "none"
        L.append(f"- The set's own requests in a run with it (client trace): {got}. The parent "
                 f"lists {x['group_kinds']} group-kinds and {x['namespaces']} namespaces; a member "
                 "LIST covers a group-kind across namespaces.")
        L.append(f"- Its phases (JSON log): inventory (the parent read, the members and the "
                 f"releases listed) {ms(x['inventory'])}, prune (nothing to delete, the parent "
                 f"already as narrow as its members) {ms(x['prune'])}.")
        L.append("- Why the set costs less than nothing: the member LISTs give each object's uid, "
                 "resourceVersion and generation, from which the ledger vouches for it; without the "
                 "set, each object is read (a GET) for the ledger to compare.")
        L.append("- What bounds the inventory phase: its requests go out together (the parent's "
                 "GET with the LISTs), so it lasts one round trip, as long as the slowest "
                 "label-selected LIST takes the API server, which answers them at once on the "
                 "machine's shared cores.")
        if x["not_noop"]:
            L.append(f"- **Not a no-op**: changed {x['not_noop']}.")
        L.append("")

    if "diff" in s:
        x = s["diff"]
        L.append("## diff, read-only, on the converged sim plan\n")
        L.append("A: `bookinfo-up diff plans/sim.toml` (every step: Helm releases read from their "
                 "storage Secrets, every object a GET and a server-side dry run, namespaces, the "
                 "Kiali merge). B: `kubectl diff --server-side --force-conflicts` over the plan's "
                 "rendered manifests (B does less: no Helm releases, no merge). Same cluster, "
                 f"alternating. Median A **{x['a_median']:.3f} s**, B {x['b_median']:.3f} s, "
                 f"B/A **{x['speedup_median']:.1f}×**.\n")
        L.append("| pair | A | B | B/A | exit A / B | apiserver requests A / B |")
        L.append("|---|---|---|---|---|---|")
        for i, p in enumerate(x["pairs"], 1):
            L.append(f"| {i} | {p['a']:.3f} s | {p['b']:.3f} s | {p['b_over_a']:.1f}× | "
                     f"{p['rc'][0]} / {p['rc'][1]} | {p['apiserver'][0]} / {p['apiserver'][1]} |")
        L.append("")

    L.append("## Peak RSS of bookinfo-up\n")
    for k, name in SCENARIOS.items():
        if k in s:
            L.append(f"- {name}: median {s[k]['a_rss_median']:.1f} MB, max {s[k]['a_rss_max']:.1f} MB "
                     f"(getrusage; kubectl's largest process on side B: {s[k]['b_rss_max']:.1f} MB)")
    if "sim" in s:
        L.append(f"- sim plan no-op: max {s['sim']['hwm_max']:.1f} MB (VmHWM, sampled every 20 ms)")
    if s.get("sim_cold_hwm"):
        L.append(f"- sim plan cold, creating the cluster: {s['sim_cold_hwm']:.1f} MB (VmHWM)")
    L.append("")
    L.append("Every run's raw figures: [results.json](results.json).")
    return "\n".join(L) + "\n"


def print_summary(s: dict):
    print()
    print(f"{'scenario':<38} {'A median':>9} {'B median':>9} {'B/A':>6}   pairs B/A")
    for k, name in SCENARIOS.items():
        if k in s:
            x = s[k]
            pairs = " ".join(f"{p['b_over_a']:.1f}" for p in x["pairs"])
            print(f"{name:<38} {x['a_median']:>7.3f} s {x['b_median']:>7.3f} s "
                  f"{x['speedup_median']:>5.1f}×   {pairs}")
    if "sim" in s:
        print(f"{'sim plan no-op (Helm steps included)':<38} {s['sim']['median']:>7.3f} s")
    if "diff" in s:
        x = s["diff"]
        pairs = " ".join(f"{p['b_over_a']:.1f}" for p in x["pairs"])
        print(f"{'diff vs kubectl diff --server-side':<38} {x['a_median']:>7.3f} s "
              f"{x['b_median']:>7.3f} s {x['speedup_median']:>5.1f}×   {pairs}")
    print()
    for what, got, ok in verdicts(s):
        print(f"{'met ' if ok else 'MISS'}  {what}: {got}")


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--pairs", type=int, default=5, help="A/B pairs per scenario (default 5)")
    p.add_argument("--sim-runs", type=int, default=7, help="no-op runs of plans/sim.toml (default 7)")
    p.add_argument("--scenarios", default="diff,cold,noop,drift,cold-unthrottled",
                   help="which A/B scenarios (default: all five); the sim plan always runs")
    p.add_argument("--idle", type=float, default=3.0, help="seconds to measure the idle request rate")
    p.add_argument("--work", help="work folder (default: a new temporary folder)")
    p.add_argument("--keep", action="store_true", help="keep the cluster and the work folder")
    p.add_argument("--results", default=str(ROOT / "bench/results.md"))
    p.add_argument("--report-only", action="store_true",
                   help="write the .md again from the .json next to it, without running")
    p.add_argument("mode", nargs="?", choices=("seed",), default="seed",
                   help="`scale`: the scale bench instead (`bench/run.py scale --help`)")
    if sys.argv[1:2] == ["scale"]:
        import scale
        scale.main(sys.argv[2:])
        return
    args = p.parse_args()
    out = Path(args.results)

    if args.report_only:
        results = json.loads(out.with_suffix(".json").read_text())
        results["summary"] = s = summarize(results)
        write_section(out, "seed", markdown(results, s))
        out.with_suffix(".json").write_text(json.dumps(results, indent=1, default=str) + "\n")
        print_summary(s)
        return

    for tool in ("kubectl", "kwokctl", "helm"):
        if shutil.which(tool) is None:
            sys.exit(f"bench: `{tool}` is not on PATH; run `eval \"$(bash testbed/env.sh)\"`")
    if not os.environ.get("BOOKINFO_UP_ISTIO_DIR"):
        sys.exit("bench: BOOKINFO_UP_ISTIO_DIR is unset; run `eval \"$(bash testbed/env.sh)\"`")
    if not UP.is_file():
        sys.exit("bench: target/release/bookinfo-up is missing; run `cargo build --release`")

    started = time.time()
    bench = Bench(args)
    log(f"work folder {bench.work}")
    scenarios = [x.strip() for x in args.scenarios.split(",") if x.strip()]
    failed = True
    try:
        bench.sim()
        bench.prune_cost()
        if "diff" in scenarios:
            bench.diff_runs()
        bench.prepare_ab()
        if "cold" in scenarios:
            bench.cold()
        if "noop" in scenarios:
            bench.noop()
        if "drift" in scenarios:
            bench.drift_runs()
        if "cold-unthrottled" in scenarios:
            # The sim plan's cluster is not needed any more: two clusters at once on two
            # cores would slow both.
            if not args.keep:
                subprocess.run([DOWN, PLAN_SIM, "-q"], env=bench.env, cwd=ROOT, check=False)
            bench.unthrottled()
        failed = False
    finally:
        bench.teardown(failed)

    results = bench.results
    for r in results["runs"]:
        # Paths into the work folder, gone with it.
        r.pop("stdout", None)
        r.pop("stderr", None)
    results.update(date=dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
                   machine=machine(), versions=versions(), pairs=args.pairs,
                   sim_runs=args.sim_runs, bench_seconds=time.time() - started)
    s = summarize(results)
    results["summary"] = s
    write_section(out, "seed", markdown(results, s))
    out.with_suffix(".json").write_text(json.dumps(results, indent=1, default=str) + "\n")
    log(f"wrote {out} and {out.with_suffix('.json')}")
    print_summary(s)


if __name__ == "__main__":
    main()
