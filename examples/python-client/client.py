#!/usr/bin/env python3
"""A small Berth client in Python, using the .proto files through grpcio.

It creates (or updates) a ConfigMap, then watches pods and prints each
change. The Python stubs are generated from ../../proto/proto on first run
(protoc with grpc's Python plugin), so the .proto files stay the only
contract.

It reaches the cluster with mutual TLS, with the credentials file a
`berth` command would use (--config, else $BERTH_CONFIG, else
~/.berth/config): its CA, client certificate and key.

Needs Debian's python3-grpcio, python3-protobuf, python3-yaml,
protobuf-compiler and protobuf-compiler-grpc.
"""

import argparse
import base64
import os
import shutil
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
PROTO_ROOT = os.path.join(HERE, "..", "..", "proto", "proto")
GEN = os.path.join(HERE, "gen")
PROTOS = ["berth/v1/objects.proto", "berth/v1/api.proto"]


def generate():
    """Compiles the .proto files into Python modules under gen/."""
    plugin = shutil.which("grpc_python_plugin")
    if plugin is None:
        sys.exit("grpc_python_plugin not found: apt-get install protobuf-compiler-grpc")
    os.makedirs(GEN, exist_ok=True)
    subprocess.run(
        ["protoc", f"-I{PROTO_ROOT}", f"--python_out={GEN}", f"--grpc_python_out={GEN}",
         f"--plugin=protoc-gen-grpc_python={plugin}", *PROTOS],
        check=True,
    )


def load_stubs():
    newest_proto = max(os.path.getmtime(os.path.join(PROTO_ROOT, p)) for p in PROTOS)
    marker = os.path.join(GEN, "berth", "v1", "api_pb2_grpc.py")
    if not os.path.exists(marker) or os.path.getmtime(marker) < newest_proto:
        generate()
    sys.path.insert(0, GEN)
    from berth.v1 import api_pb2, api_pb2_grpc, objects_pb2  # noqa: E402
    return api_pb2, api_pb2_grpc, objects_pb2


def credentials(path):
    """The current context's first controller, CA, certificate and key."""
    import yaml

    with open(path) as f:
        config = yaml.safe_load(f)
    current = config["current-context"]
    context = next(c["context"] for c in config["contexts"] if c["name"] == current)
    cluster = next(c["cluster"] for c in config["clusters"] if c["name"] == context["cluster"])
    user = next(u["user"] for u in config["users"] if u["name"] == context["user"])
    servers = [s for e in cluster.get("extensions", []) for s in e["extension"]["servers"]]
    server = servers[0] if servers else cluster["server"].removeprefix("https://")
    data = lambda v: base64.b64decode(v)  # noqa: E731
    return server, data(cluster["certificate-authority-data"]), \
        data(user["client-certificate-data"]), data(user["client-key-data"])


def default_config():
    return os.environ.get("BERTH_CONFIG") or os.path.expanduser("~/.berth/config")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=default_config(), help="credentials file (kubeconfig's shape)")
    parser.add_argument("--server", help="a controller, HOST:PORT (default: the credentials' first)")
    parser.add_argument("--namespace", default="default")
    parser.add_argument("--configmap", default="python-demo")
    parser.add_argument("--max-events", type=int, default=0, help="stop after this many pod events (0: never)")
    parser.add_argument("--timeout", type=float, default=0, help="stop watching after this many seconds (0: never)")
    args = parser.parse_args()

    import grpc

    api_pb2, api_pb2_grpc, objects_pb2 = load_stubs()
    server, ca, cert, key = credentials(args.config)
    tls = grpc.ssl_channel_credentials(root_certificates=ca, private_key=key, certificate_chain=cert)
    channel = grpc.secure_channel(args.server or server, tls)
    configmaps = api_pb2_grpc.ConfigMapsStub(channel)
    pods = api_pb2_grpc.PodsStub(channel)

    cm = objects_pb2.ConfigMap(
        metadata=objects_pb2.ObjectMeta(name=args.configmap, namespace=args.namespace,
                                        labels={"created-by": "python-client"}),
        data={"greeting": "hello from python", "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())},
    )
    try:
        stored = configmaps.Create(cm, timeout=10)
        verb = "created"
    except grpc.RpcError as e:
        if e.code() != grpc.StatusCode.ALREADY_EXISTS:
            sys.exit(f"error: {e.details()}")
        stored = configmaps.Update(cm, timeout=10)
        verb = "updated"
    print(f"{verb} configmap {stored.metadata.namespace}/{stored.metadata.name} "
          f"at resourceVersion {stored.metadata.resource_version}", flush=True)

    deadline = time.monotonic() + args.timeout if args.timeout else None
    request = api_pb2.WatchRequest(namespace=args.namespace, bookmark_interval_seconds=1)
    stream = pods.Watch(request, timeout=args.timeout or None)
    print("watching pods", flush=True)
    seen = 0
    try:
        for event in stream:
            if event.type == "BOOKMARK":
                continue
            pod = event.object
            node = pod.spec.node_name or "<pending>"
            print(f"{event.type} pod {pod.metadata.namespace}/{pod.metadata.name} "
                  f"node={node} phase={pod.status.phase}", flush=True)
            seen += 1
            if args.max_events and seen >= args.max_events:
                break
            if deadline and time.monotonic() > deadline:
                break
    except grpc.RpcError as e:
        if e.code() != grpc.StatusCode.DEADLINE_EXCEEDED:
            sys.exit(f"error: the watch failed: {e.details()}")
    finally:
        stream.cancel()
    print(f"saw {seen} pod events", flush=True)


if __name__ == "__main__":
    main()
