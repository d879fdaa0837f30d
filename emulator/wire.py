"""Bytes each client sent, counted by the stand-in that received them, per interface and table.

What a client put on the wire for its records: for gRPC (protobuf, JSON and Arrow Flight)
each request message's length plus its 5-byte gRPC prefix; for REST the request body; for
the Kafka and MQTT listeners each whole request or packet. TLS records, HTTP/2 frames and
headers are not counted, so the figure is the application payload the service's quotas
meter, and comparable between interfaces. The harness reads it before and after a writer
runs (`/api/local/status` → `wire_bytes`) and divides by the rows it sent.
"""

from __future__ import annotations

from collections import defaultdict

# The gRPC length prefix: a compressed flag byte and a 4-byte length.
GRPC_PREFIX = 5

# Interface names, as the writers ask for them.
ZEROBUS_PROTO = "zerobus-grpc-proto"
ZEROBUS_JSON = "zerobus-grpc-json"
ZEROBUS_ARROW = "zerobus-arrow-flight"
ZEROBUS_REST = "zerobus-rest"
ZEROBUS_KAFKA = "zerobus-kafka"
ZEROBUS_MQTT = "zerobus-mqtt"


class WireCounters:
    """Cumulative bytes received per (interface, table); one instance per stack."""

    def __init__(self) -> None:
        self._bytes: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))

    def add(self, interface: str, table: str, nbytes: int) -> None:
        self._bytes[interface][table] += nbytes

    def get(self, interface: str, table: str) -> int:
        return self._bytes.get(interface, {}).get(table, 0)

    def snapshot(self) -> dict[str, dict[str, int]]:
        return {iface: dict(tables) for iface, tables in self._bytes.items()}
