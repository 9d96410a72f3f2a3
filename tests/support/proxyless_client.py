"""A proxyless gRPC client (grpcio with an xDS bootstrap, no Envoy): `python -m
tests.support.proxyless_client XDS_PORT TARGET TIMEOUT_S` calls `/test.Echo/Call` on TARGET
(`xds:///orders`) and prints one JSON line: the call's status code, details and seconds taken.
A process of its own: grpcio reads its xDS bootstrap once."""

from __future__ import annotations

import json
import os
import sys
import time


def main(port: str, target: str, timeout_s: str) -> None:
    os.environ["GRPC_XDS_BOOTSTRAP_CONFIG"] = json.dumps(
        {
            "xds_servers": [
                {
                    "server_uri": f"127.0.0.1:{port}",
                    "channel_creds": [{"type": "insecure"}],
                    "server_features": ["xds_v3"],
                }
            ],
            "node": {"id": "proxyless-client", "locality": {}},
        }
    )
    import grpc  # noqa: PLC0415 - after the bootstrap is set

    started = time.monotonic()
    with grpc.insecure_channel(target) as channel:
        try:
            channel.unary_unary("/test.Echo/Call")(b"x", timeout=float(timeout_s))
            code, details = "OK", ""
        except grpc.RpcError as err:
            code, details = err.code().name, err.details() or ""
    took = round(time.monotonic() - started, 2)
    print(json.dumps({"code": code, "details": details, "seconds": took}))


if __name__ == "__main__":
    main(*sys.argv[1:4])
