#!/usr/bin/env python3
"""`just bench scale`: bookinfo-up against kubectl and helm at N = 100, 1,000 and 5,000 objects.

The harness generates, for each N, N objects in 10 namespaces (a ConfigMap, a Deployment of one
replica and a Service per app, in turn; plus the 10 Namespaces), rendered once and given to
every side in the form that side takes:

  bookinfo-up   a plan of 10 `apply` steps, one per namespace, over the rendered files
                (provider `existing`, run with --kubeconfig)
  kubectl       `kubectl apply --server-side --force-conflicts -f DIR` over the same files, one
                per namespace, as a user would
  helm          `helm upgrade --install` of a chart whose templates are the same files
  floor         the API server's own floor: the same creates, sent by a minimal Go client
                (bench/floor, standard library only) at the API server's max-in-flight,
                Namespaces first, then in helm's order (ConfigMaps, Services, Deployments)

(kapp, the peer the issue names, does not build here: the Go module proxy refuses
carvel.dev/kapp and its older path github.com/k14s/kapp, 403 for every version.)

One kwok cluster from the testbed (kwokctl's binary runtime: real etcd, kube-apiserver,
controller-manager and scheduler; a simulated node that takes every pod) serves every run. Its
controller-manager and scheduler are not rate-limited (1,000 requests/s), so that the pods of
5,000 objects settle in seconds between runs rather than minutes. For each N and repetition,
the sides take turns (the order rotates between repetitions), and each side runs:

  cold    from an empty cluster (the harness deletes the namespaces, untimed, and waits until
          they are gone and the API server is quiet), until the tool exits
  no-op   the same again, over what its own cold run made (after every Deployment rolled out)
  drift   1% of the objects changed by hand (ConfigMap data, a Deployment's
          revisionHistoryLimit, a Service's targetPort; field manager bench-hand-edit), until
          the tool exits; the harness checks that every change was put back

(the floor runs cold only). Every timed run records the wall time, peak RSS (getrusage), the
client's own requests (bookinfo-up's kube-client trace, kubectl's -v=6 lines, the floor's own
count; helm logs none), the change of the API server's apiserver_request_total, and the CPU
time each cluster component and the tool spent meanwhile (from /proc), which says what limited
the run.

Writes bench/scale.json, the "Scale" section of bench/results.md and bench/scale.svg (time
against N for each side, drawn by matplotlib from a virtual environment under
~/.cache/bookinfo-up/bench).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import run as seed  # noqa: E402  (the shared pieces: Api, measure, the trace readers, machine)

ROOT = seed.ROOT
UP = seed.UP
SIDES = ("bookinfo-up", "kubectl", "helm", "floor")
SCENARIOS = ("cold", "noop", "drift")
NAMESPACES = 10
LABEL = "bench.bookinfo-up.io/scale"
CLUSTER = "bench-scale"
HELM_NS = "scale-helm"
RELEASE = "scale"
PLAN_NAME = "bench-scale"
HAND = "bench-hand-edit"
RESULTS_JSON = ROOT / "bench/scale.json"
PLOT = ROOT / "bench/scale.svg"
PLOT_SCRIPT = ROOT / "bench/plot_scale.py"
FLOOR_SRC = ROOT / "bench/floor"
CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "bookinfo-up/bench"
MATPLOTLIB = "matplotlib==3.11.2"
# Components of the kwok cluster whose CPU time is sampled around each run.
COMPONENTS = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler",
              "kwok-controller")
TARGETS = {
    "noop_seconds": 1.0,       # no-op at the largest N under 1 s
    "noop_speedup": 20.0,      # and >= 20x kubectl apply --server-side
    "cold_floor_ratio": 1.5,   # cold at the largest N within 1.5x of the API server's floor
    "rss_mb": 150.0,           # peak RSS at the largest N
}
# helm's client is rate-limited by client-go's defaults (5 requests/s) unless told otherwise:
# 5,000 objects would take over 15 minutes. It gets the limits the harness's other clients
# have none of; the figure is helm's, not its throttle's.
HELM_LIMITS = ("--qps", "1000", "--burst-limit", "2000")


def log(msg: str) -> None:
    seed.log(msg)


def median(xs):
    return seed.median(xs)


# --- the objects ----------------------------------------------------------------------------


def ns_name(i: int) -> str:
    return f"scale-{i:02d}"


def generate(n: int) -> dict[str, list[dict]]:
    """N objects in 10 namespaces, each namespace's list led by its Namespace: per app a
    ConfigMap, a Deployment (one replica) and a Service, in turn."""
    per = n // NAMESPACES
    out = {}
    for i in range(NAMESPACES):
        ns = ns_name(i)
        objs = [{"apiVersion": "v1", "kind": "Namespace",
                 "metadata": {"name": ns, "labels": {LABEL: "1"}}}]
        for k in range(per):
            app = f"app-{k // 3:04d}"
            meta = {"name": app, "namespace": ns, "labels": {LABEL: "1", "app": app}}
            kind = k % 3
            if kind == 0:
                objs.append({"apiVersion": "v1", "kind": "ConfigMap", "metadata": meta,
                             "data": {"app": app, "value": f"v{k}",
                                      "settings.yaml": f"name: {app}\nreplicas: 1\nlevel: info\n"}})
            elif kind == 1:
                objs.append({
                    "apiVersion": "apps/v1", "kind": "Deployment", "metadata": meta,
                    "spec": {
                        "replicas": 1, "revisionHistoryLimit": 2,
                        "selector": {"matchLabels": {"app": app}},
                        "template": {
                            "metadata": {"labels": {"app": app, LABEL: "1"}},
                            "spec": {"containers": [{
                                "name": "app", "image": "registry.invalid/bench/app:1",
                                "ports": [{"containerPort": 8080, "protocol": "TCP"}]}]}}}})
            else:
                objs.append({"apiVersion": "v1", "kind": "Service", "metadata": meta,
                             "spec": {"selector": {"app": app},
                                      "ports": [{"name": "http", "port": 80, "targetPort": 8080,
                                                 "protocol": "TCP"}]}})
        out[ns] = objs
    return out


PLAIN = re.compile(r"[A-Za-z][A-Za-z0-9._/-]*")
KEYWORDS = {"true", "false", "null", "yes", "no", "on", "off", "y", "n"}


def yaml_scalar(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return str(v)
    if isinstance(v, str) and PLAIN.fullmatch(v) and v.lower() not in KEYWORDS:
        return v
    return json.dumps(v)


def yaml_lines(v, indent: int) -> list[str]:
    """Block YAML of dicts, lists and scalars, as a person would write it."""
    pad = " " * indent
    lines = []
    if isinstance(v, dict):
        for k, x in v.items():
            key = yaml_scalar(k)
            if isinstance(x, (dict, list)) and x:
                lines.append(f"{pad}{key}:")
                lines += yaml_lines(x, indent + (2 if isinstance(x, dict) else 0))
            else:
                lines.append(f"{pad}{key}: {yaml_scalar(x) if not isinstance(x, (dict, list)) else ('{}' if isinstance(x, dict) else '[]')}")
    elif isinstance(v, list):
        for x in v:
            sub = yaml_lines(x, indent + 2)
            first = sub[0].lstrip()
            lines.append(f"{pad}- {first}")
            lines += sub[1:]
    else:
        lines.append(pad + yaml_scalar(v))
    return lines


def to_yaml(objs: list[dict]) -> str:
    return "".join("---\n" + "\n".join(yaml_lines(o, 0)) + "\n" for o in objs)


def collection(o: dict) -> str:
    ns = o["metadata"].get("namespace")
    return {"Namespace": "/api/v1/namespaces",
            "ConfigMap": f"/api/v1/namespaces/{ns}/configmaps",
            "Service": f"/api/v1/namespaces/{ns}/services",
            "Deployment": f"/apis/apps/v1/namespaces/{ns}/deployments"}[o["kind"]]


def object_path(o: dict) -> str:
    return f"{collection(o)}/{o['metadata']['name']}"


def write_inputs(n: int, base: Path) -> dict:
    """Each side's input for N: the rendered files, the plan, the chart, the floor's list."""
    objs = generate(n)
    files = base / "manifests"
    chart = base / "chart"
    (chart / "templates").mkdir(parents=True, exist_ok=True)
    files.mkdir(parents=True, exist_ok=True)
    steps = []
    floor = []
    for ns, lst in objs.items():
        text = to_yaml(lst)
        (files / f"{ns}.yaml").write_text(text)
        (chart / "templates" / f"{ns}.yaml").write_text(text)
        steps.append(f'[[step]]\nid = "{ns}"\ndescription = "{len(lst) - 1} objects in {ns}"\n'
                     f'[step.apply]\nnamespace = "{ns}"\nfiles = ["manifests/{ns}.yaml"]\n')
        floor += lst
    (chart / "Chart.yaml").write_text(
        f"apiVersion: v2\nname: bench-scale\ndescription: {n} objects in {NAMESPACES} namespaces "
        "(bench/scale.py)\ntype: application\nversion: 0.1.0\n")
    plan = base / "plan.toml"
    plan.write_text(
        f'# Generated by bench/scale.py: {n} objects in {NAMESPACES} namespaces.\n'
        f'[plan]\nname = "{PLAN_NAME}"\n'
        f'description = "{n} ConfigMaps, Deployments and Services in {NAMESPACES} namespaces"\n\n'
        '[cluster]\nprovider = "existing"\n\n' + "\n".join(steps))
    # The floor sends the Namespaces, then the rest in helm's install order (ConfigMaps, then
    # Services, then Deployments): the Deployments' ReplicaSets and pods, which the controllers
    # create meanwhile, then compete with the fewest of its creates.
    order = {"Namespace": 0, "ConfigMap": 1, "Service": 2, "Deployment": 3}
    floor.sort(key=lambda o: order[o["kind"]])
    (base / "floor.ndjson").write_text("".join(
        json.dumps({"phase": 0 if o["kind"] == "Namespace" else 1, "path": collection(o),
                    "body": o}) + "\n" for o in floor))
    # 1% of the objects, spread over the namespaces and kinds, for the drift scenario.
    flat = [o for lst in objs.values() for o in lst if o["kind"] != "Namespace"]
    drift = [o for i, o in enumerate(flat) if i % 100 == 50] or flat[len(flat) // 2:][:1]
    return {"n": n, "dir": base, "files": files, "chart": chart, "plan": plan,
            "floor": base / "floor.ndjson", "drift": drift,
            "deployments": sum(1 for o in flat if o["kind"] == "Deployment")}


def drifted(o: dict) -> tuple[dict, callable]:
    """The hand edit for `o` (a merge patch) and the check that a run put it back."""
    if o["kind"] == "ConfigMap":
        want = o["data"]["value"]
        return ({"data": {"value": "drifted"}}, lambda live: live["data"].get("value") == want)
    if o["kind"] == "Deployment":
        return ({"spec": {"revisionHistoryLimit": 7}},
                lambda live: live["spec"].get("revisionHistoryLimit") == 2)
    return ({"spec": {"ports": [{"name": "http", "port": 80, "targetPort": 9999, "protocol": "TCP"}]}},
            lambda live: live["spec"]["ports"][0].get("targetPort") == 8080)


# --- the cluster ------------------------------------------------------------------------------


def machine_busy() -> float:
    """CPU seconds the whole machine has been busy (all CPUs, /proc/stat)."""
    fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(x) for x in fields[:8])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def cpu_times(pids: dict[str, int]) -> dict[str, float]:
    tick = os.sysconf("SC_CLK_TCK")
    out = {}
    for name, pid in pids.items():
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            out[name] = (int(fields[11]) + int(fields[12])) / tick
        except (OSError, IndexError, ValueError):
            out[name] = None
    return out


class Scale:
    def __init__(self, args):
        self.args = args
        self.work = Path(args.work or tempfile.mkdtemp(prefix="bookinfo-bench-scale-"))
        self.work.mkdir(parents=True, exist_ok=True)
        (self.work / "runs").mkdir(exist_ok=True)
        self.kwok_dir = self.work / "kwok"
        self.kubeconfig = self.work / "kubeconfig"
        self.env = dict(os.environ)
        self.env.update(BOOKINFO_UP_STATE_DIR=str(self.work / "state"),
                        KUBECACHEDIR=str(self.work / "kubectl-cache"), NO_COLOR="1",
                        KWOK_WORKDIR=str(self.kwok_dir),
                        HELM_CACHE_HOME=str(self.work / "helm/cache"),
                        HELM_CONFIG_HOME=str(self.work / "helm/config"),
                        HELM_DATA_HOME=str(self.work / "helm/data"))
        self.env.pop("KUBECONFIG", None)
        self.counter = 0
        self.results = {"runs": [], "waits": []}
        self.pids: dict[str, int] = {}

    # set-up

    def build_floor(self) -> Path:
        out = CACHE / "floor"
        src = sorted(FLOOR_SRC.glob("*"))
        stamp = CACHE / "floor.src"
        digest = "\n".join(f"{p.name}:{p.stat().st_mtime_ns}:{p.stat().st_size}" for p in src)
        if not out.exists() or not stamp.exists() or stamp.read_text() != digest:
            log("building bench/floor (Go, standard library only)")
            CACHE.mkdir(parents=True, exist_ok=True)
            env = dict(os.environ, GOFLAGS="-buildvcs=false", CGO_ENABLED="0")
            subprocess.run(["go", "build", "-o", str(out), "."], cwd=FLOOR_SRC, env=env, check=True)
            stamp.write_text(digest)
        return out

    def create_cluster(self):
        log(f"kwok cluster {CLUSTER}: controller-manager and scheduler at 1,000 requests/s")
        config = seed.kwokctl_ports(self.work / "kwokctl.yaml")
        t0 = time.time()
        subprocess.run(
            ["kwokctl", "--config", str(config), "create", "cluster", "--name", CLUSTER,
             "--runtime", "binary", "--wait", "120s", "--kubeconfig", str(self.kubeconfig),
             "--extra-args", "kube-apiserver=service-cluster-ip-range=10.96.0.0/16",
             "--extra-args", "kube-controller-manager=kube-api-qps=1000",
             "--extra-args", "kube-controller-manager=kube-api-burst=2000",
             # (kwokctl v0.7.0 panics on a fifth --extra-args; the scheduler's burst stays 100,
             # which at 1,000 requests/s refills within 0.1 s)
             "--extra-args", "kube-scheduler=kube-api-qps=1000"],
            env=self.env, check=True, capture_output=True)
        self.results["cluster_seconds"] = time.time() - t0
        node = dict(seed.KWOK_NODE)
        node["status"] = {"allocatable": {"cpu": "10000", "memory": "10Ti", "pods": "100000"},
                          "capacity": {"cpu": "10000", "memory": "10Ti", "pods": "100000"}}
        path = self.work / "node.json"
        path.write_text(json.dumps(node))
        self.kubectl("apply", "-f", str(path))
        self.api = seed.Api(self.kubeconfig, self.work)
        self.creds = seed.credentials(self.kubeconfig, self.work, "floor-")
        self.pids = self.component_pids()
        self.results["apiserver_flags"] = self.apiserver_flags()
        log(f"  ready in {self.results['cluster_seconds']:.1f} s; components "
            + ", ".join(f"{k} {v}" for k, v in self.pids.items()))

    def component_pids(self) -> dict[str, int]:
        found = {}
        marker = str(self.kwok_dir).encode()
        for proc in Path("/proc").iterdir():
            if not proc.name.isdigit():
                continue
            try:
                argv = (proc / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if not argv or marker not in b" ".join(argv):
                continue
            name = os.path.basename(argv[0].decode(errors="replace"))
            if name in COMPONENTS and name not in found:
                found[name] = int(proc.name)
        return found

    def apiserver_flags(self) -> dict:
        pid = self.pids.get("kube-apiserver")
        flags = {"max-requests-inflight": 400, "max-mutating-requests-inflight": 200}
        if pid:
            for a in Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0"):
                for k in flags:
                    if a.startswith(f"--{k}="):
                        flags[k] = int(a.split("=", 1)[1])
        return flags

    def kubectl(self, *args):
        return subprocess.run(["kubectl", "--kubeconfig", str(self.kubeconfig), *args],
                              env=self.env, check=True, capture_output=True, text=True).stdout

    def delete_cluster(self):
        if self.kwok_dir.exists():
            subprocess.run(["kwokctl", "delete", "cluster", "--name", CLUSTER], env=self.env,
                           check=False, capture_output=True)

    # waits (untimed)

    def quiet(self, rate=25.0, window=1.0, timeout=180.0):
        """Until the API server serves fewer than `rate` resource requests a second."""
        deadline = time.time() + timeout
        while True:
            a = self.api.requests_total()["total"]
            time.sleep(window)
            b = self.api.requests_total()["total"]
            if (b - a) / window < rate:
                return (b - a) / window
            if time.time() > deadline:
                raise RuntimeError(f"the API server is still busy: {(b - a) / window:.0f} requests/s")

    def settle(self, inputs, timeout=900.0):
        """Every Deployment of the bench rolled out, then the API server quiet."""
        t0 = time.time()
        deadline = t0 + timeout
        while True:
            ds = self.api.get(f"/apis/apps/v1/deployments?labelSelector={LABEL}%3D1")["items"]
            waiting = [d for d in ds if not seed.rolled_out(d)]
            if len(ds) >= inputs["deployments"] and not waiting:
                break
            if time.time() > deadline:
                raise RuntimeError(f"{len(waiting)} of {len(ds)} Deployments not rolled out")
            time.sleep(1.0)
        self.quiet()
        self.results["waits"].append({"what": "settle", "n": inputs["n"],
                                      "seconds": time.time() - t0})

    def clean(self, n):
        """Deletes the bench's namespaces (and helm's release namespace, and any ApplySet
        parent), waits until they are gone and the API server is quiet."""
        t0 = time.time()
        names = [ns_name(i) for i in range(NAMESPACES)] + [HELM_NS]
        for ns in names:
            self.api.request("DELETE", f"/api/v1/namespaces/{ns}")
        self.api.request("DELETE", "/api/v1/namespaces/kube-system/secrets?labelSelector="
                         "applyset.kubernetes.io%2Fid")
        deadline = time.time() + 900
        while any(self.api.get(f"/api/v1/namespaces/{ns}") is not None for ns in names):
            if time.time() > deadline:
                raise RuntimeError("the bench's namespaces were not deleted within 15 min")
            time.sleep(0.5)
        self.quiet()
        self.results["waits"].append({"what": "clean", "n": n, "seconds": time.time() - t0})

    # the sides

    def files(self, label):
        self.counter += 1
        base = self.work / "runs" / f"{self.counter:03d}-{label}"
        return base.with_suffix(".out"), base.with_suffix(".err")

    def argv(self, side, inputs):
        if side == "bookinfo-up":
            return [UP, inputs["plan"], "--output", "json", "--log-format", "json",
                    "--kubeconfig", self.kubeconfig]
        if side == "kubectl":
            return ["kubectl", "--kubeconfig", self.kubeconfig, "apply", "--server-side",
                    "--force-conflicts", "-f", inputs["files"], "-v=6"]
        if side == "helm":
            return ["helm", "upgrade", "--install", RELEASE, inputs["chart"], "-n", HELM_NS,
                    "--create-namespace", "--kubeconfig", self.kubeconfig, *HELM_LIMITS]
        c = self.creds
        argv = [self.floor, "-server", c["server"], "-ca", c["ca"],
                "-concurrency", str(self.results["apiserver_flags"]["max-mutating-requests-inflight"]),
                "-objects", inputs["floor"]]
        if c["cert"]:
            argv += ["-cert", c["cert"], "-key", c["key"]]
        if c["token"]:
            argv += ["-token", c["token"]]
        return argv

    def timed(self, side, scenario, inputs, rep):
        n = inputs["n"]
        label = f"{n}-{scenario}-{side}-{rep}"
        env = dict(self.env)
        if side == "bookinfo-up":
            env["BOOKINFO_UP_LOG"] = "warn,bookinfo_up=info,kube_client=debug"
        out, err = self.files(label)
        cpu0 = cpu_times(self.pids)
        busy0 = machine_busy()
        before = self.api.requests_total()
        r = seed.measure(self.argv(side, inputs), env, out, err)
        after = self.api.requests_total()
        busy1 = machine_busy()
        cpu1 = cpu_times(self.pids)
        r["apiserver"] = seed.metrics_delta(before, after)
        r["cpu"] = {k: (cpu1[k] - cpu0[k]) if cpu0.get(k) is not None and cpu1.get(k) is not None
                    else None for k in self.pids}
        # What the rest of the machine (other people's clusters and builds) took meanwhile.
        ours = sum(v for v in r["cpu"].values() if v) + (r.get("cpu_seconds") or 0)
        r["cpu_others"] = max(0.0, busy1 - busy0 - ours)
        r["load1"] = os.getloadavg()[0]
        if r["rc"] != 0:
            raise RuntimeError(f"{label}: {side} exited {r['rc']}; see {err}")
        if side == "bookinfo-up":
            r.update(seed.read_engine_run(r))
            r["changed"] = sorted(s for s, v in r["steps"].items() if v["outcome"] != "unchanged")
            r.pop("step_started", None)
            r.pop("step_finished", None)
        elif side == "kubectl":
            k = seed.read_kubectl_run(r)
            r.update(requests=k["requests"], non_resource=k["non_resource"],
                     requests_by_verb=k["requests_by_verb"])
        elif side == "floor":
            f = json.loads(Path(out).read_text())
            r.update(requests=f["requests"], non_resource=0, proto=f["proto"],
                     concurrency=f["concurrency"], floor_seconds=f["seconds"])
        else:
            r.update(requests=None, non_resource=None)
        r.update(side=side, scenario=scenario, n=n, rep=rep, label=label)
        for k in ("stdout", "stderr", "steps"):
            r.pop(k, None)
        self.results["runs"].append(r)
        cpu = ", ".join(f"{k} {v:.1f}" for k, v in r["cpu"].items() if v)
        log(f"  N={n} {scenario:<5} {side:<11} {r['seconds']:7.3f} s  load {r['load1']:.1f}  requests "
            f"{r['requests'] if r['requests'] is not None else '–'} (apiserver "
            f"{r['apiserver']['total']})  RSS {r['maxrss_mb']:.0f} MB  CPU s: tool "
            f"{r.get('cpu_seconds', 0):.1f}, {cpu}")
        return r

    def drift(self, inputs):
        for o in inputs["drift"]:
            patch, _ = drifted(o)
            self.api.patch(object_path(o) + f"?fieldManager={HAND}", patch,
                           "application/merge-patch+json")

    def check_restored(self, inputs, label):
        bad = []
        for o in inputs["drift"]:
            _, ok = drifted(o)
            live = self.api.get(object_path(o))
            if live is None or not ok(live):
                bad.append(f"{o['kind']} {o['metadata']['namespace']}/{o['metadata']['name']}")
        if bad:
            raise RuntimeError(f"{label}: drift not repaired: {bad[:5]}")

    def one_size(self, n, reps, index):
        base = self.work / f"n{n}"
        inputs = write_inputs(n, base)
        log(f"N = {n}: {len(inputs['drift'])} objects drift; {reps} repetition(s)")
        for rep in range(reps):
            k = (rep + index) % len(self.sides)
            order = self.sides[k:] + self.sides[:k]
            for side in order:
                self.clean(n)
                self.timed(side, "cold", inputs, rep)
                self.settle(inputs)
                if side == "floor":
                    continue
                r = self.timed(side, "noop", inputs, rep)
                if side == "bookinfo-up" and r["changed"]:
                    log(f"    not a no-op: {r['changed']}")
                self.drift(inputs)
                self.quiet()
                self.timed(side, "drift", inputs, rep)
                self.check_restored(inputs, f"N={n} drift {side}")
                self.settle(inputs)
        self.clean(n)


# --- summary, report and plot ---------------------------------------------------------------


def summarize(results: dict) -> dict:
    runs = results["runs"]
    sizes = sorted({r["n"] for r in runs})
    s = {"sizes": sizes, "cells": {}, "slopes": {}}
    for side in SIDES:
        for sc in SCENARIOS:
            pts = []
            for n in sizes:
                rs = [r for r in runs if r["side"] == side and r["scenario"] == sc and r["n"] == n]
                if not rs:
                    continue
                cpu = {}
                for comp in COMPONENTS:
                    vals = [r["cpu"].get(comp) for r in rs if r["cpu"].get(comp) is not None]
                    if vals:
                        cpu[comp] = median(vals)
                cell = {
                    "seconds": median([r["seconds"] for r in rs]),
                    "runs": [r["seconds"] for r in rs],
                    "requests": median([r["requests"] for r in rs]) if rs[0]["requests"] is not None else None,
                    "non_resource": median([r["non_resource"] for r in rs]) if rs[0].get("non_resource") is not None else None,
                    "apiserver": median([r["apiserver"]["total"] for r in rs]),
                    "rss_mb": max(r["maxrss_mb"] for r in rs),
                    "tool_cpu": median([r.get("cpu_seconds") for r in rs]),
                    "others_cpu": median([r.get("cpu_others") for r in rs]),
                    "cpu": cpu,
                    "changed": sorted({x for r in rs for x in r.get("changed", [])}),
                    "proto": rs[0].get("proto"),
                }
                s["cells"][f"{side}/{sc}/{n}"] = cell
                pts.append((n, cell["seconds"]))
            if len(pts) >= 2:
                xs, ys = [p[0] for p in pts], [p[1] for p in pts]
                mx, my = statistics.fmean(xs), statistics.fmean(ys)
                slope = sum((x - mx) * (y - my) for x, y in pts) / sum((x - mx) ** 2 for x in xs)
                s["slopes"][f"{side}/{sc}"] = slope * 1000
    return s


def cell(s, side, sc, n):
    return s["cells"].get(f"{side}/{sc}/{n}")


def limit_of(c: dict | None, cpus: int) -> str:
    """What limited a run, from where the CPU went while it ran: the process that spent the
    most (the tool against the cluster's components and the rest of the machine), and how
    busy the machine was. A machine well under full load with a client waiting on answers
    means the run was bound by round trips, not by any one process's CPU."""
    if not c:
        return "–"
    shares = {k: v for k, v in c["cpu"].items() if v}
    shares["the tool"] = c.get("tool_cpu") or 0
    shares["other load"] = c.get("others_cpu") or 0
    name, top = max(shares.items(), key=lambda kv: kv[1] or 0)
    busy = sum(shares.values()) / (cpus * c["seconds"]) if c["seconds"] else 0
    return f"{name} ({top:.1f} s CPU; machine {min(busy, 1) * 100:.0f}% busy)"


def verdicts(s: dict) -> list[tuple[str, str, bool | None]]:
    n = max(s["sizes"]) if s["sizes"] else None
    t = TARGETS
    out = []
    a, k = cell(s, "bookinfo-up", "noop", n), cell(s, "kubectl", "noop", n)
    if a:
        out.append((f"no-op at {n:,} objects under {t['noop_seconds']:.0f} s",
                    f"{a['seconds']:.3f} s", a["seconds"] < t["noop_seconds"]))
    if a and k:
        ratio = k["seconds"] / a["seconds"]
        out.append((f"no-op at {n:,} objects ≥ {t['noop_speedup']:.0f}× kubectl apply --server-side",
                    f"{ratio:.1f}× ({k['seconds']:.2f} s / {a['seconds']:.3f} s)",
                    ratio >= t["noop_speedup"]))
    a, f = cell(s, "bookinfo-up", "cold", n), cell(s, "floor", "cold", n)
    if a and f:
        ratio = a["seconds"] / f["seconds"]
        out.append((f"cold at {n:,} objects within {t['cold_floor_ratio']}× of the API server's floor",
                    f"{ratio:.2f}× ({a['seconds']:.2f} s / {f['seconds']:.2f} s)",
                    ratio <= t["cold_floor_ratio"]))
    rss = [c["rss_mb"] for key, c in s["cells"].items()
           if key.startswith("bookinfo-up/") and key.endswith(f"/{n}")]
    if rss:
        out.append((f"peak RSS of bookinfo-up at {n:,} objects under {t['rss_mb']:.0f} MB",
                    f"{max(rss):.1f} MB", max(rss) < t["rss_mb"]))
    return out


def markdown(results: dict, s: dict) -> str:
    m, v = results["machine"], results["versions"]
    L = ["## Scale: bookinfo-up against kubectl and helm at 100 to 5,000 objects\n"]
    L.append(f"Generated by `just bench scale` (bench/scale.py) on {results['date']}: "
             f"N = {', '.join(f'{n:,}' for n in s['sizes'])} objects, repetitions "
             f"{', '.join(str(x) for x in results['reps'])}; the scale bench took "
             f"{results['bench_seconds'] / 60:.1f} min. Method: [README.md](README.md#scale).\n")
    L.append(f"- Machine: {m['nproc']} CPUs ({m['cpu']}), {m['memory']} memory. Load average "
             f"at the end: {', '.join(str(x) for x in m['loadavg_at_end'])}.")
    L.append(f"- Versions: bookinfo-up {v['bookinfo-up'].split()[-1]} (git {v['git']}), "
             f"Kubernetes {v.get('KUBERNETES_VERSION')}, etcd {v.get('ETCD_VERSION')}, kwok "
             f"{v.get('KWOK_VERSION')}, kubectl {v['kubectl']}, helm {v.get('HELM_VERSION')}.")
    flags = results.get("apiserver_flags", {})
    L.append(f"- Cluster: one kwok cluster (kwokctl binary runtime, {results.get('cluster_seconds', 0):.0f} s "
             "to create), controller-manager and scheduler at 1,000 requests/s, one simulated node "
             f"that takes every pod. API server max-in-flight: {flags.get('max-requests-inflight')} "
             f"(mutating {flags.get('max-mutating-requests-inflight')}).")
    L.append("- Objects: N ConfigMaps, Deployments (1 replica, so N/3 kwok pods) and Services "
             "in 10 namespaces, plus the 10 Namespaces. Sides: `bookinfo-up PLAN --kubeconfig` "
             "(10 apply steps); `kubectl apply --server-side --force-conflicts -f DIR` (one file "
             "per namespace); `helm upgrade --install` of a chart of the same files "
             f"(`{' '.join(HELM_LIMITS)}`: client-go's default 5 requests/s would make it "
             "minutes); floor: the same creates from a minimal Go client (bench/floor) at "
             "max-in-flight. kapp: not measured, the Go module proxy refuses carvel.dev/kapp "
             "(and github.com/k14s/kapp), 403 for every version.\n")

    L.append("### Targets\n")
    L.append("| target | measured (median) | met |")
    L.append("|---|---|---|")
    for what, got, ok in verdicts(s):
        L.append(f"| {what} | {got} | {'yes' if ok else '**no**'} |")
    L.append("")

    cpus = int(m.get("nproc") or os.cpu_count() or 1)
    for sc, title in (("cold", "cold (from an empty cluster)"), ("noop", "no-op"),
                      ("drift", "1% drift")):
        L.append(f"### {title}\n")
        L.append("| N | side | time | requests (own / apiserver) | peak RSS | CPU s: tool / "
                 "apiserver / etcd / controller-manager / rest of the machine | limited by |")
        L.append("|---|---|---|---|---|---|---|")
        for n in s["sizes"]:
            for side in SIDES:
                c = cell(s, side, sc, n)
                if not c:
                    continue
                own = "–" if c["requests"] is None else f"{c['requests']:.0f}"
                cp = c["cpu"]

                def f(x):
                    return "–" if x is None else f"{x:.1f}"
                runs = ", ".join(f"{x:.3f}" for x in c["runs"]) if len(c["runs"]) > 1 else ""
                L.append(f"| {n:,} | {side} | {c['seconds']:.3f} s"
                         + (f" ({runs})" if runs else "")
                         + f" | {own} / {c['apiserver']:.0f} | {c['rss_mb']:.0f} MB | "
                         f"{f(c['tool_cpu'])} / {f(cp.get('kube-apiserver'))} / {f(cp.get('etcd'))} / "
                         f"{f(cp.get('kube-controller-manager'))} / {f(c.get('others_cpu'))} | "
                         f"{limit_of(c, cpus)} |")
        L.append("")

    L.append("### Slope: seconds per 1,000 objects (least squares over N)\n")
    L.append("| side | cold | no-op | drift |")
    L.append("|---|---|---|---|")
    for side in SIDES:
        vals = [s["slopes"].get(f"{side}/{sc}") for sc in SCENARIOS]
        if any(x is not None for x in vals):
            L.append(f"| {side} | " + " | ".join("–" if x is None else f"{x:.3f} s" for x in vals) + " |")
    L.append("")
    L.append("![time against N for each side](scale.svg)\n")
    L.append("- *requests*: own = the client's own trace (bookinfo-up's kube-client trace, "
             "kubectl's `-v=6`, the floor's count; helm logs none); apiserver = the change of "
             "`apiserver_request_total` over the run, every client's (so, on cold and drift, also "
             "the controllers and kwok reacting while the tool ran). *CPU s*: CPU seconds each "
             "process spent during the run (/proc); *limited by*: the process that spent the most.")
    not_noop = sorted({x for key, c in s["cells"].items() if "/noop/" in key for x in c["changed"]})
    if not_noop:
        L.append(f"- **Not a no-op**: bookinfo-up changed {not_noop} on a no-op run.")
    L.append("")
    return "\n".join(L) + "\n"


def plot(results_json: Path, out: Path) -> bool:
    """bench/scale.svg, drawn by matplotlib from a virtual environment of the bench's own."""
    venv = CACHE / "venv"
    py = venv / "bin/python"
    ok = subprocess.run([str(py), "-c", "import matplotlib"], capture_output=True).returncode == 0 \
        if py.exists() else False
    if not ok:
        log(f"installing {MATPLOTLIB} into {venv} (PyPI)")
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        r = subprocess.run([str(py), "-m", "pip", "install", "-q", MATPLOTLIB])
        if r.returncode != 0:
            log("matplotlib could not be installed: no plot")
            return False
    r = subprocess.run([str(py), str(PLOT_SCRIPT), str(results_json), str(out)])
    return r.returncode == 0


def write_report(results: dict):
    s = summarize(results)
    results["summary"] = s
    RESULTS_JSON.write_text(json.dumps(results, indent=1, default=str) + "\n")
    seed.write_section(ROOT / "bench/results.md", "scale", markdown(results, s))
    if plot(RESULTS_JSON, PLOT):
        log(f"wrote {PLOT}")
    print()
    for what, got, ok in verdicts(s):
        print(f"{'met ' if ok else 'MISS'}  {what}: {got}")


def main(argv):
    p = argparse.ArgumentParser(prog="bench/run.py scale", description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", default="100,1000,5000", help="N, comma-separated")
    p.add_argument("--reps", default="2,1,1",
                   help="repetitions for each N (comma-separated, the last repeats)")
    p.add_argument("--sides", default=",".join(SIDES), help="which sides (default: all)")
    p.add_argument("--work", help="work folder (default: a new temporary folder)")
    p.add_argument("--keep", action="store_true", help="keep the cluster and the work folder")
    p.add_argument("--report-only", action="store_true",
                   help="write the section of results.md and the plot again from bench/scale.json")
    args = p.parse_args(argv)
    if args.report_only:
        write_report(json.loads(RESULTS_JSON.read_text()))
        return
    for tool in ("kubectl", "kwokctl", "helm", "go"):
        if shutil.which(tool) is None:
            sys.exit(f"bench scale: `{tool}` is not on PATH; run `eval \"$(bash testbed/env.sh)\"`")
    if "bookinfo-up" in args.sides and not UP.is_file():
        sys.exit("bench scale: target/release/bookinfo-up is missing; run `cargo build --release`")
    sizes = [int(x) for x in args.sizes.split(",")]
    reps = [int(x) for x in args.reps.split(",")]
    reps = [reps[min(i, len(reps) - 1)] for i in range(len(sizes))]
    started = time.time()
    bench = Scale(args)
    bench.sides = [x for x in args.sides.split(",") if x]
    log(f"work folder {bench.work}")
    failed = True
    try:
        bench.floor = bench.build_floor()
        bench.create_cluster()
        bench.results["background_rps"] = bench.quiet()
        for i, (n, r) in enumerate(zip(sizes, reps)):
            bench.one_size(n, r, i)
        failed = False
    finally:
        if args.keep:
            log(f"kept: {bench.work} (`KWOK_WORKDIR={bench.kwok_dir} kwokctl delete cluster "
                f"--name {CLUSTER}` removes the cluster)")
        else:
            log("deleting the bench cluster")
            bench.delete_cluster()
            if failed:
                log(f"logs of every run kept in {bench.work / 'runs'}")
            else:
                shutil.rmtree(bench.work, ignore_errors=True)
    results = bench.results
    results.update(date=dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
                   machine=seed.machine(), versions=seed.versions(), sizes=sizes, reps=reps,
                   sides=bench.sides, bench_seconds=time.time() - started)
    write_report(results)


if __name__ == "__main__":
    main(sys.argv[1:])
