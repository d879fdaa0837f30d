"""The proto2 form of a table schema, derived at run time as the Zerobus SDK's
`generate_proto` tool derives it from a Unity Catalog table:

- one message named after the table, fields numbered from 1 in column order (19000-19999
  are reserved by protobuf and skipped), `optional` for nullable columns, else `required`;
- TINYINT/SMALLINT/INT/DATE -> int32 (DATE as days since 1970-01-01), BIGINT/TIMESTAMP/
  TIMESTAMP_NTZ -> int64 (microseconds since the epoch), FLOAT -> float, DOUBLE -> double,
  STRING -> string, BOOLEAN -> bool, BINARY -> bytes, VARIANT -> string (JSON text);
- ARRAY<T> -> repeated T (no arrays of arrays or of maps); MAP<K,V> -> map<K,V> (keys
  integral, bool or string; values neither arrays nor maps); STRUCT -> a nested message
  named after its field in PascalCase, every field optional;
- DECIMAL has no mapping: a schema with a DECIMAL column has no proto form.

Everything lives inside the one DescriptorProto the SDK sends with the stream.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
from google.protobuf import descriptor, descriptor_pb2, descriptor_pool, message, message_factory

from workloads.schema import TableSchema
from workloads.types import ArrayType, DataType, DecimalType, MapType, Primitive, StructType
from workloads.wire import python_columns

FDP = descriptor_pb2.FieldDescriptorProto
_SCALARS = {
    "TINYINT": FDP.TYPE_INT32,
    "SMALLINT": FDP.TYPE_INT32,
    "INT": FDP.TYPE_INT32,
    "BIGINT": FDP.TYPE_INT64,
    "FLOAT": FDP.TYPE_FLOAT,
    "DOUBLE": FDP.TYPE_DOUBLE,
    "STRING": FDP.TYPE_STRING,
    "BOOLEAN": FDP.TYPE_BOOL,
    "BINARY": FDP.TYPE_BYTES,
    "DATE": FDP.TYPE_INT32,
    "TIMESTAMP": FDP.TYPE_INT64,
    "TIMESTAMP_NTZ": FDP.TYPE_INT64,
    "VARIANT": FDP.TYPE_STRING,
}
_MAP_KEYS = {FDP.TYPE_INT32, FDP.TYPE_INT64, FDP.TYPE_BOOL, FDP.TYPE_STRING}
# Words generate_proto refuses as field names (protobuf's keywords and scalar type names).
_RESERVED = frozenset(
    (
        "syntax",
        "import",
        "option",
        "package",
        "message",
        "enum",
        "service",
        "rpc",
        "returns",
        "reserved",
        "to",
        "max",
        "double",
        "float",
        "int32",
        "int64",
        "uint32",
        "uint64",
        "sint32",
        "sint64",
        "fixed32",
        "fixed64",
        "sfixed32",
        "sfixed64",
        "bool",
        "string",
        "bytes",
    )
)


class NoProtoForm(ValueError):
    """The schema has a column whose type has no proto2 form (the reason is the message)."""


def pascal_case(name: str) -> str:
    return "".join(word[0].upper() + word[1:] for word in name.split("_") if word)


def _check_name(name: str) -> None:
    if not all(c.isalnum() or c == "_" for c in name) or not name.isascii():
        raise NoProtoForm(f"{name!r} is not a protobuf field name (letters, digits and _ only)")
    if name[0].isdigit():
        raise NoProtoForm(f"{name!r} is not a protobuf field name (it starts with a digit)")
    if name in _RESERVED:
        raise NoProtoForm(f"{name!r} is a protobuf keyword and cannot be a field name")


class _Builder:
    def __init__(self, root: str) -> None:
        self.root = root

    def field(
        self,
        owner: descriptor_pb2.DescriptorProto,
        scope: str,
        name: str,
        number: int,
        dtype: DataType,
        label: int,
        path: str,
    ) -> None:
        _check_name(name)
        f = FDP(name=name, number=number, label=label)
        if isinstance(dtype, ArrayType):
            element = dtype.element
            if isinstance(element, ArrayType | MapType):
                kind = "arrays" if isinstance(element, ArrayType) else "maps"
                raise NoProtoForm(f"column {path}: protobuf has no arrays of {kind}")
            f.label = FDP.LABEL_REPEATED
            self._typed(f, owner, scope, name, element, path)
        elif isinstance(dtype, MapType):
            if isinstance(dtype.value, ArrayType | MapType):
                raise NoProtoForm(f"column {path}: protobuf map values cannot be arrays or maps")
            key_type = _SCALARS.get(getattr(dtype.key, "name", ""))
            if key_type not in _MAP_KEYS:
                raise NoProtoForm(f"column {path}: protobuf map keys cannot be {dtype.key.sql()}")
            # A struct value's message comes first, then the entry protoc synthesises.
            value = FDP(name="value", number=2, label=FDP.LABEL_OPTIONAL)
            self._typed(value, owner, scope, name, dtype.value, f"{path}.value")
            entry_name = pascal_case(name) + "Entry"
            entry = owner.nested_type.add(name=entry_name)
            entry.field.add(name="key", number=1, label=FDP.LABEL_OPTIONAL, type=key_type)
            entry.field.append(value)
            entry.options.map_entry = True
            f.label = FDP.LABEL_REPEATED
            f.type = FDP.TYPE_MESSAGE
            f.type_name = f"{scope}.{entry_name}"
        else:
            self._typed(f, owner, scope, name, dtype, path)
        owner.field.append(f)

    def _typed(
        self,
        f: descriptor_pb2.FieldDescriptorProto,
        owner: descriptor_pb2.DescriptorProto,
        scope: str,
        name: str,
        dtype: DataType,
        path: str,
    ) -> None:
        if isinstance(dtype, StructType):
            nested_name = pascal_case(name) or "Struct"
            nested = owner.nested_type.add(name=nested_name)
            nested_scope = f"{scope}.{nested_name}"
            for i, sub in enumerate(dtype.fields, start=1):
                self.field(
                    nested,
                    nested_scope,
                    sub.name,
                    i,
                    sub.type,
                    FDP.LABEL_OPTIONAL,
                    f"{path}.{sub.name}",
                )
            f.type = FDP.TYPE_MESSAGE
            f.type_name = nested_scope
        elif isinstance(dtype, DecimalType):
            raise NoProtoForm(
                f"column {path} is {dtype.sql()}: the Zerobus SDK's generate_proto maps no "
                "DECIMAL type to protobuf"
            )
        elif isinstance(dtype, Primitive):
            f.type = _SCALARS[dtype.name]
        else:  # pragma: no cover - every DataType is handled above
            raise NoProtoForm(f"column {path}: no proto form for {dtype.sql()}")


def descriptor_proto(schema: TableSchema, message_name: str) -> descriptor_pb2.DescriptorProto:
    """The one message, nested types inside it, as generate_proto would declare it."""
    msg = descriptor_pb2.DescriptorProto(name=message_name)
    builder = _Builder(message_name)
    number = 1
    for col in schema.columns:
        if number == 19000:
            number = 20000
        label = FDP.LABEL_OPTIONAL if col.nullable else FDP.LABEL_REQUIRED
        builder.field(msg, f".{message_name}", col.name, number, col.type, label, col.name)
        number += 1
    return msg


@dataclass(frozen=True)
class ProtoForm:
    """The message class for a schema, and the descriptor the SDK sends with a stream."""

    descriptor: descriptor.Descriptor
    message_class: type[message.Message]

    def encoder(self, schema: TableSchema) -> Callable[[pa.RecordBatch], list[bytes]]:
        return ProtoEncoder(schema, self.message_class)


def proto_form(schema: TableSchema, message_name: str) -> ProtoForm:
    """Build the message in a private pool: two workloads may both call theirs `events`."""
    file = descriptor_pb2.FileDescriptorProto(
        name=f"dwbench_{uuid.uuid4().hex}.proto", syntax="proto2"
    )
    file.message_type.append(descriptor_proto(schema, message_name))
    pool = descriptor_pool.DescriptorPool()
    pool.Add(file)
    desc = pool.FindMessageTypeByName(message_name)
    return ProtoForm(desc, message_factory.GetMessageClass(desc))


class ProtoEncoder:
    """Arrow batch -> one serialized message per row. Columns are converted once to the
    values protobuf takes (days, microseconds, dicts for maps), then rows are built by
    keyword construction; None leaves a field unset."""

    def __init__(self, schema: TableSchema, message_class: type[message.Message]) -> None:
        self.schema = schema
        self.names = schema.names
        self.message_class = message_class

    def __call__(self, batch: pa.RecordBatch) -> list[bytes]:
        make = self.message_class
        serialize = make.SerializeToString
        columns = python_columns(batch, self.schema, "proto")
        names = self.names
        out = []
        for row in zip(*columns, strict=True):
            kwargs: dict[str, Any] = {
                n: v for n, v in zip(names, row, strict=True) if v is not None
            }
            out.append(serialize(make(**kwargs)))
        return out
