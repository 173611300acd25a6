"""Calls grpc.health.v1.Health/Check on the loader's unix socket with python's grpcio,
a gRPC implementation this project did not write. Prints the serving status; exits 0 only
when it is SERVING."""
import sys

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc


def main() -> int:
    socket_path, service = sys.argv[1], (sys.argv[2] if len(sys.argv) > 2 else "")
    # A stock channel, no options: grpcio sends the socket's path as :authority, and the
    # loader must accept it (an operator's first script looks like this).
    with grpc.insecure_channel(f"unix:{socket_path}") as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            reply = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
        except grpc.RpcError as err:
            print(f"RPC failed: {err.code().name}: {err.details()}")
            return 1
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    print(status)
    return 0 if status == "SERVING" else 1


if __name__ == "__main__":
    sys.exit(main())
