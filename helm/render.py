#!/usr/bin/env python3
"""Renders a chart the honest way: `helm install` (the helm v4 library, from helm-sdkpy) against
a small in-process API server that records what Helm creates, and prints those objects as a JSON
list. No cluster is needed; what is printed is exactly what Helm would send to one.

Usage: python3 helm/render.py helm/podwall [NAMESPACE] [--set-json '{"key": ...}']
Exit status 2 when the library is not installed, 1 when the install fails.
"""

import asyncio
import json
import os
import sys
import tempfile
import threading
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

# What the fake API server serves: group/version -> [(plural, kind, namespaced)].
RESOURCES = {
    "v1": [("namespaces", "Namespace", False), ("pods", "Pod", True), ("services", "Service", True),
           ("serviceaccounts", "ServiceAccount", True), ("configmaps", "ConfigMap", True),
           ("secrets", "Secret", True)],
    "apps/v1": [("deployments", "Deployment", True)],
    "policy/v1": [("poddisruptionbudgets", "PodDisruptionBudget", True)],
    "rbac.authorization.k8s.io/v1": [("clusterroles", "ClusterRole", False),
                                     ("clusterrolebindings", "ClusterRoleBinding", False),
                                     ("roles", "Role", True), ("rolebindings", "RoleBinding", True)],
    "admissionregistration.k8s.io/v1": [("mutatingwebhookconfigurations", "MutatingWebhookConfiguration", False)],
    "apiextensions.k8s.io/v1": [("customresourcedefinitions", "CustomResourceDefinition", False)],
    "cert-manager.io/v1": [("issuers", "Issuer", True), ("certificates", "Certificate", True)],
    "podwall.io/v1alpha1": [("podwallpolicies", "PodwallPolicy", True)],
    "coordination.k8s.io/v1": [("leases", "Lease", True)],
    "monitoring.coreos.com/v1": [("podmonitors", "PodMonitor", True),
                                 ("servicemonitors", "ServiceMonitor", True),
                                 ("prometheusrules", "PrometheusRule", True)],
}
VERBS = ["create", "delete", "get", "list", "patch", "update", "watch"]


class State:
    def __init__(self):
        self.lock = threading.Lock()
        self.objects = {}  # path -> object
        self.created = []


def resource_list(gv):
    return {"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv,
            "resources": [{"name": p, "singularName": k.lower(), "namespaced": n, "kind": k,
                           "verbs": VERBS} for p, k, n in RESOURCES[gv]]}


def make_handler(state):
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def send(self, code, body):
            data = json.dumps(body).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def not_found(self):
            self.send(404, {"kind": "Status", "apiVersion": "v1", "status": "Failure",
                            "reason": "NotFound", "code": 404, "message": "not found"})

        def do_GET(self):
            path = self.path.split("?")[0].rstrip("/")
            if path == "/version":
                return self.send(200, {"major": "1", "minor": "31", "gitVersion": "v1.31.0",
                                       "platform": "linux/amd64"})
            if path == "/api":
                return self.send(200, {"kind": "APIVersions", "versions": ["v1"]})
            if path == "/apis":
                groups = {}
                for gv in RESOURCES:
                    if "/" in gv:
                        g, v = gv.split("/")
                        groups.setdefault(g, []).append({"groupVersion": gv, "version": v})
                return self.send(200, {"kind": "APIGroupList", "apiVersion": "v1", "groups": [
                    {"name": g, "versions": vs, "preferredVersion": vs[0]} for g, vs in groups.items()]})
            if path == "/api/v1":
                return self.send(200, resource_list("v1"))
            for gv in RESOURCES:
                if path == f"/apis/{gv}":
                    return self.send(200, resource_list(gv))
            with state.lock:
                obj = state.objects.get(path)
            if obj is not None:
                return self.send(200, obj)
            # A list of a collection: empty.
            if self.path.split("?")[0].endswith("s") and path.count("/") in (3, 4, 5, 6):
                last = path.rsplit("/", 1)[-1]
                if any(last == p for res in RESOURCES.values() for p, _, _ in res):
                    return self.send(200, {"kind": "List", "apiVersion": "v1",
                                           "metadata": {"resourceVersion": "1"}, "items": []})
            return self.not_found()

        def do_POST(self):
            length = int(self.headers.get("Content-Length", "0"))
            body = self.rfile.read(length)
            path = self.path.split("?")[0].rstrip("/")
            if not self.headers.get("Content-Type", "").startswith("application/json"):
                # Helm's own release record (a Secret, sent as protobuf): kept, not rendered.
                return self.send(201, {"kind": "Secret", "apiVersion": "v1",
                                       "metadata": {"name": "helm-release", "resourceVersion": "1"}})
            obj = json.loads(body or b"{}")
            meta = obj.setdefault("metadata", {})
            meta.setdefault("uid", str(uuid.uuid4()))
            meta["resourceVersion"] = "1"
            meta.setdefault("creationTimestamp", "2026-01-01T00:00:00Z")
            if obj.get("kind") == "CustomResourceDefinition":
                obj["status"] = {"conditions": [
                    {"type": "Established", "status": "True"},
                    {"type": "NamesAccepted", "status": "True"}],
                    "acceptedNames": obj.get("spec", {}).get("names", {})}
            with state.lock:
                state.objects[f"{path}/{meta.get('name')}"] = obj
                state.created.append(obj)
            self.send(201, obj)

        def do_PATCH(self):
            length = int(self.headers.get("Content-Length", "0"))
            self.rfile.read(length)
            path = self.path.split("?")[0].rstrip("/")
            with state.lock:
                obj = state.objects.get(path)
            if obj is None:
                obj = {"kind": "Secret", "apiVersion": "v1",
                       "metadata": {"name": path.rsplit("/", 1)[-1], "resourceVersion": "2"}}
            self.send(200, obj)

        do_PUT = do_PATCH

    return Handler


def main() -> int:
    args = [a for a in sys.argv[1:]]
    values = None
    if "--set-json" in args:
        i = args.index("--set-json")
        values = json.loads(args[i + 1])
        del args[i:i + 2]
    chart = args[0] if args else "helm/podwall"
    namespace = args[1] if len(args) > 1 else "podwall-system"
    try:
        import helm_sdkpy
    except ImportError:
        print("helm-sdkpy is not installed: python3 -m pip install --ignore-requires-python helm-sdkpy",
              file=sys.stderr)
        return 2
    state = State()
    server = ThreadingHTTPServer(("127.0.0.1", 0), make_handler(state))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    port = server.server_address[1]
    with tempfile.TemporaryDirectory() as tmp:
        kubeconfig = os.path.join(tmp, "kubeconfig")
        with open(kubeconfig, "w") as f:
            json.dump({"apiVersion": "v1", "kind": "Config", "current-context": "fake",
                       "clusters": [{"name": "fake", "cluster": {"server": f"http://127.0.0.1:{port}"}}],
                       "users": [{"name": "fake", "user": {"token": "fake"}}],
                       "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "fake",
                                                                 "namespace": namespace}}]}, f)
        # Releases are kept in memory, not as Secrets in the fake cluster.
        os.environ["HELM_DRIVER"] = "memory"
        os.environ["HELM_CACHE_HOME"] = os.path.join(tmp, "cache")
        os.environ["HELM_CONFIG_HOME"] = os.path.join(tmp, "config")
        os.environ["HELM_DATA_HOME"] = os.path.join(tmp, "data")
        config = helm_sdkpy.Configuration(namespace=namespace, kubeconfig=kubeconfig)
        try:
            asyncio.run(helm_sdkpy.Install(config).run(
                "podwall", chart, values=values, wait=False, timeout=60))
        except Exception as e:  # noqa: BLE001 - report whatever the library raised
            print(f"render.py: helm install failed: {e}", file=sys.stderr)
            return 1
    server.shutdown()
    json.dump(state.created, sys.stdout, indent=1)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
