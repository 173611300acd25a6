"""Calls the loader's socket with a stock grpcio channel (no options) the way a careless or
hostile client would, and prints one JSON line per case: the status code and the length of
the message that came back. Usage: hostile_calls.py SOCKET CASE
Cases: garbage (bytes that are not protobuf), oversized (a 5 MiB request), long-address
(a 3.9 MiB address string)."""
import json
import sys

import grpc

from protowire import field

LOOKUP = "/loader.v1.Loader/LookupTranslation"


def raw_call(channel, payload: bytes):
    call = channel.unary_unary(LOOKUP, request_serializer=None, response_deserializer=None)
    try:
        call(payload, timeout=20)
        return {"code": "OK", "message_len": 0}
    except grpc.RpcError as err:
        return {"code": err.code().name, "message_len": len(err.details() or "")}


def main() -> int:
    socket_path, case = sys.argv[1], sys.argv[2]
    with grpc.insecure_channel(f"unix:{socket_path}") as channel:
        if case == "garbage":
            result = raw_call(channel, b"\xff\xff\xff\xff\x0f")
        elif case == "oversized":
            result = raw_call(channel, field(1, field(1, b"1" * (5 * 1024 * 1024))))
        elif case == "long-address":
            tuple_msg = field(1, b"9" * 3_900_000) + field(3, b"10.0.0.1")
            result = raw_call(channel, field(1, tuple_msg))
        else:
            print(f"unknown case {case}", file=sys.stderr)
            return 2
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
