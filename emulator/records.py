"""Decoding of Zerobus records (protobuf or JSON) into Arrow batches that fit a table.

A decoder is built once per stream: the proto decoder checks the stream's descriptor
against the table when the stream is created, so per-record work is only parsing.
Any mismatch raises SchemaMismatchError naming the column (its full path, for a field
inside a STRUCT); a batch with one bad record is rejected whole, so nothing of it is written.

Proto descriptors are taken in the shape the Zerobus SDK's `generate_proto` derives from a
table: top-level fields `required` or `optional` by the column's nullability; DATE an int32
of days since 1970-01-01; TIMESTAMP and TIMESTAMP_NTZ an int64 of microseconds; ARRAY<T>
a `repeated T`; MAP<K,V> a proto map; STRUCT a message nested in the record message (its
fields all optional). DECIMAL has no proto form there, so a descriptor that tries to fill
a DECIMAL column is refused. Proto has no null array or map: an absent repeated or map
field is an empty ARRAY or MAP.

JSON records are objects keyed by column name: STRUCTs are objects, ARRAYs arrays, MAPs
objects (keys converted to the key type), DECIMALs strings ("19.99") or numbers (exact:
a value that does not fit the precision and scale is refused), DATE an int of days or an
ISO date, TIMESTAMP an int of µs or an ISO string (UTC unless it names a zone),
TIMESTAMP_NTZ an int of µs or an ISO string without a zone, BINARY base64.
"""

from __future__ import annotations

import base64
import datetime as dt
import decimal
import itertools
import json
import math
import operator
import sys
import uuid
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import pyarrow as pa
from google.protobuf import descriptor, descriptor_pb2, descriptor_pool, message, message_factory
from google.protobuf.unknown_fields import UnknownFieldSet

from emulator.errors import SchemaMismatchError
from emulator.schema import (
    INTEGER_BITS,
    ArrayType,
    Column,
    DecimalType,
    MapType,
    PrimitiveType,
    SqlType,
    StructType,
    TableSchema,
)
from emulator.value_ranges import check_batch, date_problem, timestamp_problem

FDP = descriptor_pb2.FieldDescriptorProto

_INT32 = {FDP.TYPE_INT32, FDP.TYPE_SINT32, FDP.TYPE_SFIXED32}
_INT64 = {FDP.TYPE_INT64, FDP.TYPE_SINT64, FDP.TYPE_SFIXED64}
# Proto field types each primitive column type accepts (dates: int32 days; timestamps: int64 µs).
_PROTO_TYPES: dict[str, set[int]] = {
    "STRING": {FDP.TYPE_STRING},
    "DOUBLE": {FDP.TYPE_DOUBLE},
    "FLOAT": {FDP.TYPE_FLOAT},
    "BIGINT": _INT64,
    "INT": _INT32,
    "SMALLINT": _INT32,
    "TINYINT": _INT32,
    "BOOLEAN": {FDP.TYPE_BOOL},
    "DATE": _INT32,
    "TIMESTAMP": _INT64,
    "TIMESTAMP_NTZ": _INT64,
    "BINARY": {FDP.TYPE_BYTES},
}
_TYPE_NAMES = {v: k.removeprefix("TYPE_").lower() for k, v in FDP.Type.items()}

# Arrow type the decoded values of a top-level primitive column are first put into, before
# the cast to the column type (so a range error names the column).
_WIRE_ARROW: dict[str, pa.DataType] = {
    "STRING": pa.string(),
    "DOUBLE": pa.float64(),
    "FLOAT": pa.float32(),
    "BIGINT": pa.int64(),
    "INT": pa.int32(),
    "SMALLINT": pa.int64(),
    "TINYINT": pa.int64(),
    "BOOLEAN": pa.bool_(),
    "DATE": pa.int32(),
    "TIMESTAMP": pa.int64(),
    "TIMESTAMP_NTZ": pa.int64(),
    "BINARY": pa.binary(),
}

_EPOCH = dt.date(1970, 1, 1)
_EPOCH_UTC = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_EPOCH_NAIVE = dt.datetime(1970, 1, 1)


def _wire_type(col: Column) -> pa.DataType:
    if isinstance(col.type, PrimitiveType):
        return _WIRE_ARROW[col.type.name]
    return col.arrow_type


def _to_batch(schema: TableSchema, columns: Sequence[Sequence[Any]], count: int) -> pa.RecordBatch:
    arrays = []
    for col, values in zip(schema.columns, columns, strict=True):
        try:
            arr = pa.array(values, type=_wire_type(col), size=count)
            if arr.type != col.arrow_type:
                arr = arr.cast(col.arrow_type)
        except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError) as exc:
            row = _first_unfit(col, values)
            where = f"column {col.name}" if row is None else f"record {row}: field '{col.name}'"
            raise SchemaMismatchError(
                f"{where}: value does not fit {col.type}: {exc}", col.name
            ) from None
        if not col.nullable and arr.null_count:
            row = arr.is_null().index(True).as_py()
            raise SchemaMismatchError(
                f"column {col.name} is NOT NULL but record {row} has no value for it", col.name
            )
        arrays.append(arr)
    batch = pa.RecordBatch.from_arrays(arrays, schema=schema.to_arrow())
    # Arrow's types hold more than Databricks stores (DATE beyond 9999, say): such a value
    # is refused here, before it can fail a group commit or every later read.
    check_batch(batch, schema)
    return batch


def _first_unfit(col: Column, values: Sequence[Any]) -> int | None:
    """The record whose value does not fit the column (only once the whole array did not)."""
    for row, value in enumerate(values):
        try:
            pa.array([value], type=_wire_type(col)).cast(col.arrow_type)
        except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError):
            return row
    return None


# -- proto ---------------------------------------------------------------------------------------

# A converter turns a decoded proto value (scalar, repeated container, map or message) into
# the Python value Arrow takes for the column type; None means the value is taken as it is.
ProtoConverter = Callable[[Any], Any] | None


class ProtoRecordDecoder:
    """Decodes records serialized with the stream's descriptor."""

    def __init__(self, schema: TableSchema, descriptor_bytes: bytes) -> None:
        self.schema = schema
        try:
            proto = descriptor_pb2.DescriptorProto.FromString(descriptor_bytes)
        except message.DecodeError:
            raise SchemaMismatchError(
                "descriptor_proto is not a serialized DescriptorProto"
            ) from None
        if not proto.name:
            raise SchemaMismatchError("descriptor_proto has no message name")
        self._message_name = proto.name
        self._cls = _build_class(proto)
        desc = self._cls.DESCRIPTOR
        # Flat columns: (field name, column index, required); the hot path reads them column
        # by column. Nested columns: (field name, column index, has presence, converter).
        self._fields: list[tuple[str, int, bool]] = []
        self._nested: list[tuple[str, int, bool, ProtoConverter]] = []
        seen: set[str] = set()
        for field in desc.fields:
            col = self.schema.column(field.name)
            if col is None:
                raise SchemaMismatchError(
                    f"field {field.name} of {proto.name} is not a column of the table "
                    f"(columns: {', '.join(self.schema.names)})",
                    field.name,
                )
            slot = self.schema.columns.index(col)
            converter = _proto_converter(field, col.type, col.name)
            if isinstance(col.type, PrimitiveType):
                self._fields.append((field.name, slot, field.is_required))
            else:
                self._nested.append((field.name, slot, field.has_presence, converter))
            seen.add(col.name)
        for col in self.schema.columns:
            if not col.nullable and col.name not in seen:
                raise SchemaMismatchError(
                    f"column {col.name} is NOT NULL but {proto.name} has no field for it",
                    col.name,
                )

    def decode(self, payloads: Sequence[bytes]) -> pa.RecordBatch:
        parse: Callable[[bytes], message.Message] = self._cls.FromString
        try:
            messages = list(map(parse, payloads))
        except message.DecodeError:
            raise SchemaMismatchError(
                f"record {self._first_undecodable(payloads)} is not a valid "
                f"{self._message_name} message"
            ) from None
        if any(map(len, map(UnknownFieldSet, messages))):
            index = next(i for i, m in enumerate(messages) if len(UnknownFieldSet(m)))
            raise SchemaMismatchError(
                f"record {index} has fields that {self._message_name} does not declare"
            )
        # Column by column: one attribute lookup per value is several times cheaper than
        # assembling rows from ListFields().
        count = len(messages)
        columns: list[list[Any]] = [[None] * count for _ in self.schema.columns]
        # upb does not enforce proto2 `required` when parsing; IsInitialized() does, and
        # when it holds, required fields need no presence check.
        complete = all(m.IsInitialized() for m in messages)
        for field_name, slot, required in self._fields:
            get = operator.attrgetter(field_name)
            if required and complete:
                columns[slot] = list(map(get, messages))
            else:
                columns[slot] = [get(m) if m.HasField(field_name) else None for m in messages]
        for field_name, slot, presence, convert in self._nested:
            columns[slot] = _nested_column(messages, field_name, presence, convert)
        return _to_batch(self.schema, columns, count)

    def _first_undecodable(self, payloads: Sequence[bytes]) -> int:
        for i, payload in enumerate(payloads):
            try:
                self._cls.FromString(payload)
            except message.DecodeError:
                return i
        return -1


def _nested_column(
    messages: Sequence[message.Message], name: str, presence: bool, convert: ProtoConverter
) -> list[Any]:
    values: list[Any] = []
    for index, msg in enumerate(messages):
        if presence and not msg.HasField(name):
            values.append(None)
            continue
        value = getattr(msg, name)
        try:
            values.append(convert(value) if convert is not None else value)
        except SchemaMismatchError as exc:
            raise SchemaMismatchError(f"record {index}: {exc}", exc.column) from None
    return values


def _build_class(proto: descriptor_pb2.DescriptorProto) -> type[message.Message]:
    """The message class of a descriptor sent alone (its nested types with it).

    The SDK sends `Descriptor.CopyToProto`, whose references to nested types are fully
    qualified (`.pkg.Record.Route`, or `.Record.Route` without a package), or, given a
    serialized file, the message as written there (`Route`, `Record.Route`). Each is
    resolved within the message and rewritten into a private package, in a pool of the
    stream's own: clients may reuse message names with other shapes.
    """
    package = f"zerobus_stream_{uuid.uuid4().hex}"
    resolved = descriptor_pb2.DescriptorProto()
    resolved.CopyFrom(proto)
    paths = _nested_paths(resolved, "")
    _rewrite_references(resolved, [], proto.name, paths, f".{package}.{proto.name}")
    file_proto = descriptor_pb2.FileDescriptorProto(
        name=f"{package}.proto", package=package, syntax="proto2"
    )
    file_proto.message_type.add().CopyFrom(resolved)
    pool = descriptor_pool.DescriptorPool()
    try:
        pool.Add(file_proto)
        desc = pool.FindMessageTypeByName(f"{package}.{proto.name}")
    except Exception as exc:
        raise SchemaMismatchError(f"descriptor_proto is not a valid message: {exc}") from None
    return message_factory.GetMessageClass(desc)


def _nested_paths(proto: descriptor_pb2.DescriptorProto, prefix: str) -> set[str]:
    paths: set[str] = set()
    for nested in proto.nested_type:
        path = f"{prefix}{nested.name}"
        paths.add(path)
        paths |= _nested_paths(nested, f"{path}.")
    for enum in proto.enum_type:
        paths.add(f"{prefix}{enum.name}")
    return paths


def _rewrite_references(
    proto: descriptor_pb2.DescriptorProto,
    scope: list[str],
    root: str,
    paths: set[str],
    qualified_root: str,
) -> None:
    for field in proto.field:
        if not field.type_name:
            continue
        path = _resolve(field.type_name, scope, root, paths)
        if path is None:
            where = ".".join([root, *scope, field.name])
            raise SchemaMismatchError(
                f"field {where} refers to type {field.type_name}, which is not nested in "
                f"{root}: nest every message type inside the record message, as the "
                "SDK's generate_proto does"
            )
        field.type_name = f"{qualified_root}.{path}"
    for nested in proto.nested_type:
        _rewrite_references(nested, [*scope, nested.name], root, paths, qualified_root)


def _resolve(reference: str, scope: list[str], root: str, paths: set[str]) -> str | None:
    """The path of a referenced type inside the root message (`Route.Stops`), or None."""
    parts = reference.lstrip(".").split(".")
    if not reference.startswith("."):
        # Relative: proto's scoping rules, innermost scope first.
        for depth in range(len(scope), -1, -1):
            candidate = ".".join([*scope[:depth], *parts])
            if candidate in paths:
                return candidate
    # Qualified by the root message's name, after whatever package the client used.
    for i, part in enumerate(parts):
        if part == root and ".".join(parts[i + 1 :]) in paths:
            return ".".join(parts[i + 1 :])
    return None


def _proto_type_name(field: descriptor.FieldDescriptor) -> str:
    if field.type == FDP.TYPE_MESSAGE:
        return f"message {field.message_type.name}"
    return _TYPE_NAMES.get(field.type, str(field.type))


def _is_map(field: descriptor.FieldDescriptor) -> bool:
    return (
        field.type == FDP.TYPE_MESSAGE
        and field.is_repeated
        and field.message_type.GetOptions().map_entry
    )


def _proto_converter(
    field: descriptor.FieldDescriptor, col_type: SqlType, path: str
) -> ProtoConverter:
    """Check a proto field against a column (or STRUCT field) type; return its converter."""
    if isinstance(col_type, ArrayType):
        if not field.is_repeated or _is_map(field):
            shape = "a map" if _is_map(field) else f"not repeated ({_proto_type_name(field)})"
            raise SchemaMismatchError(
                f"field {path} is {shape}, but column {path} is {col_type}", path
            )
        element = _value_converter(field, col_type.element, path, container=col_type)
        if element is None:
            return list
        return lambda values: [element(v) for v in values]
    if isinstance(col_type, MapType):
        if not _is_map(field):
            raise SchemaMismatchError(
                f"field {path} is not a proto map ({'repeated ' if field.is_repeated else ''}"
                f"{_proto_type_name(field)}), but column {path} is {col_type}",
                path,
            )
        entry = field.message_type
        key = _value_converter(
            entry.fields_by_name["key"], col_type.key, f"{path}.key", container=col_type
        )
        value = _value_converter(
            entry.fields_by_name["value"], col_type.value, f"{path}.value", container=col_type
        )
        if key is None and value is None:
            return lambda entries: list(entries.items())
        key_of = key or _identity
        value_of = value or _identity
        return lambda entries: [(key_of(k), value_of(v)) for k, v in entries.items()]
    if field.is_repeated:
        shape = "a map" if _is_map(field) else f"repeated {_proto_type_name(field)}"
        raise SchemaMismatchError(f"field {path} is {shape}, but column {path} is {col_type}", path)
    return _value_converter(field, col_type, path)


def _identity(value: Any) -> Any:
    return value


def _value_converter(
    field: descriptor.FieldDescriptor,
    col_type: SqlType,
    path: str,
    *,
    container: ArrayType | MapType | None = None,
) -> ProtoConverter:
    """Check the type of one value of a field (its label aside) against a column type
    (an element, key or value type of `container`, if given)."""
    if isinstance(col_type, DecimalType):
        what = f"is {col_type}" if container is None else f"is {container}"
        raise SchemaMismatchError(
            f"field {path} fills column {path}, which {what}: DECIMAL has no proto form "
            "(the Zerobus SDK's generate_proto maps none); leave the field out of the "
            "descriptor, or write this table with JSON records",
            path,
        )
    if isinstance(col_type, ArrayType | MapType):
        assert container is not None  # a top-level ARRAY or MAP is checked by the caller
        raise SchemaMismatchError(
            f"column {path} is {container}: proto has no form for an ARRAY or MAP inside an "
            "ARRAY or MAP (the Zerobus SDK's generate_proto refuses them too)",
            path,
        )
    if isinstance(col_type, StructType):
        if field.type != FDP.TYPE_MESSAGE or field.message_type.GetOptions().map_entry:
            raise SchemaMismatchError(
                f"field {path} has proto type {_proto_type_name(field)}, but column {path} "
                f"is {col_type}",
                path,
            )
        return _struct_converter(field.message_type, col_type, path)
    assert isinstance(col_type, PrimitiveType)
    allowed = _PROTO_TYPES[col_type.name]
    if field.type not in allowed:
        expected = ", ".join(sorted(_TYPE_NAMES[t] for t in allowed))
        raise SchemaMismatchError(
            f"field {path} has proto type {_proto_type_name(field)}, but column {path} is "
            f"{col_type} (expected {expected})",
            path,
        )
    # A top-level column's range is checked by the cast of its whole array (_to_batch).
    bits = INTEGER_BITS.get(col_type.name, 64)
    return _int_range_check(bits, col_type.name, path) if bits < 32 else None


def _int_range_check(bits: int, type_name: str, path: str) -> Callable[[Any], Any]:
    low, high = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1

    def check(value: int) -> int:
        if not low <= value <= high:
            raise SchemaMismatchError(
                f"field {path}: {value} is out of range for {type_name}", path
            )
        return value

    return check


def _struct_converter(
    desc: descriptor.Descriptor, struct: StructType, path: str
) -> Callable[[Any], Any]:
    # (proto field name, struct field name, has presence, converter)
    entries: list[tuple[str, str, bool, ProtoConverter]] = []
    covered: set[str] = set()
    for field in desc.fields:
        target = struct.field(field.name)
        sub = f"{path}.{field.name}"
        if target is None:
            raise SchemaMismatchError(
                f"field {sub} of {desc.name} is not a field of column {path} "
                f"(fields: {', '.join(f.name for f in struct.fields)})",
                sub,
            )
        converter = _proto_converter(field, target.type, f"{path}.{target.name}")
        entries.append((field.name, target.name, field.has_presence, converter))
        covered.add(target.name)
    not_null = [f.name for f in struct.fields if not f.nullable]
    for name in not_null:
        if name not in covered:
            raise SchemaMismatchError(
                f"column {path}.{name} is NOT NULL but {desc.name} has no field for it",
                f"{path}.{name}",
            )
    required = {
        proto_name: f"{path}.{name}"
        for proto_name, name, presence, _ in entries
        if presence and name in not_null
    }

    def convert(msg: message.Message) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for proto_name, name, presence, converter in entries:
            if presence and not msg.HasField(proto_name):
                if proto_name in required:
                    raise SchemaMismatchError(
                        f"field {required[proto_name]} is NOT NULL but has no value",
                        required[proto_name],
                    )
                continue
            value = getattr(msg, proto_name)
            out[name] = converter(value) if converter is not None else value
        return out

    return convert


# -- JSON ----------------------------------------------------------------------------------------


class _BadValue(Exception):
    """A JSON value that does not fit its type; the path is collected on the way out."""

    def __init__(self, problem: str) -> None:
        super().__init__(problem)
        self.problem = problem
        self.segments: list[str] = []

    def path(self, column: str) -> str:
        return column + "".join(reversed(self.segments))


JsonConverter = Callable[[Any], Any]


def _mismatch(expected: SqlType | str, value: Any) -> _BadValue:
    return _BadValue(f"expected {expected}, got {type(value).__name__} {value!r:.40}")


class JsonRecordDecoder:
    """Decodes JSON objects whose keys are column names."""

    def __init__(self, schema: TableSchema) -> None:
        self.schema = schema
        self._index = {c.name.lower(): i for i, c in enumerate(schema.columns)}
        self._converters = [_json_converter(c.type) for c in schema.columns]
        # Numbers for a DECIMAL column are read exactly; other floats then come as Decimals
        # too, and their converters turn them into floats (correctly rounded).
        self._parse_float: Callable[[str], Any] | None = (
            decimal.Decimal if any(_has_decimal(c.type) for c in schema.columns) else None
        )

    def decode(self, payloads: Sequence[str]) -> pa.RecordBatch:
        return self._decode_objects(map(self._parse, payloads, itertools.count()), len(payloads))

    def decode_array(self, body: bytes | str) -> pa.RecordBatch:
        """A JSON array of row objects (a Zerobus REST insert body) as one batch."""
        try:
            rows = json.loads(body, parse_float=self._parse_float)
        except (ValueError, RecursionError) as exc:  # JSONDecodeError and UnicodeError included
            raise SchemaMismatchError(f"the body is not valid JSON: {json_problem(exc)}") from None
        if not isinstance(rows, list):
            raise SchemaMismatchError("the body must be a JSON array of row objects")
        if not rows:
            raise SchemaMismatchError("the body is an empty array: there are no rows to insert")
        return self._decode_objects(rows, len(rows))

    def _parse(self, payload: str, i: int) -> Any:
        try:
            return json.loads(payload, parse_float=self._parse_float)
        except (ValueError, TypeError, RecursionError) as exc:
            problem = json_problem(exc)
            raise SchemaMismatchError(f"record {i} is not valid JSON: {problem}") from None

    def _decode_objects(self, objects: Iterable[Any], count: int) -> pa.RecordBatch:
        width = len(self.schema.columns)
        columns: list[list[Any]] = [[] for _ in range(width)]
        columns_of = self.schema.columns
        for i, obj in enumerate(objects):
            if not isinstance(obj, dict):
                raise SchemaMismatchError(f"record {i} is not a JSON object")
            row: list[Any] = [None] * width
            for key, value in obj.items():
                slot = self._index.get(key.lower())
                if slot is None:
                    raise SchemaMismatchError(
                        f"record {i}: field '{key}' is not a column of the table "
                        f"(columns: {', '.join(self.schema.names)})",
                        key,
                    )
                if value is not None:
                    try:
                        row[slot] = self._converters[slot](value)
                    except _BadValue as exc:
                        path = exc.path(columns_of[slot].name)
                        raise SchemaMismatchError(
                            f"record {i}: field '{path}': {exc.problem}", path
                        ) from None
            for slot, value in enumerate(row):
                columns[slot].append(value)
        return _to_batch(self.schema, columns, count)


def json_problem(exc: BaseException) -> str:
    """What is wrong with a JSON text that did not parse, for the client."""
    if isinstance(exc, RecursionError):
        return "it is nested too deeply"
    text = str(exc)
    if "integer string conversion" in text:
        # Python's guard against quadratic int parsing (sys.get_int_max_str_digits).
        return f"a number has more than {sys.get_int_max_str_digits()} digits"
    return text


def _has_decimal(t: SqlType) -> bool:
    if isinstance(t, DecimalType):
        return True
    if isinstance(t, ArrayType):
        return _has_decimal(t.element)
    if isinstance(t, MapType):
        return _has_decimal(t.key) or _has_decimal(t.value)
    if isinstance(t, StructType):
        return any(_has_decimal(f.type) for f in t.fields)
    return False


def _json_converter(t: SqlType) -> JsonConverter:
    """A function from a (non-null) JSON value to the value Arrow takes for the type."""
    if isinstance(t, PrimitiveType):
        return _JSON_PRIMITIVES[t.name](t)
    if isinstance(t, DecimalType):
        return _json_decimal(t)
    if isinstance(t, ArrayType):
        return _json_array(t)
    if isinstance(t, MapType):
        return _json_map(t)
    assert isinstance(t, StructType)
    return _json_struct(t)


def _json_string(t: SqlType) -> JsonConverter:
    def convert(value: Any) -> Any:
        if not isinstance(value, str):
            raise _mismatch(t, value)
        return value

    return convert


_FLOAT32_MAX = 3.4028234663852886e38
_SPECIAL_FLOATS = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}


def _json_float(t: SqlType) -> JsonConverter:
    single = t == PrimitiveType("FLOAT")

    def convert(value: Any) -> Any:
        if isinstance(value, bool) or not isinstance(value, int | float | decimal.Decimal):
            if isinstance(value, str) and value in _SPECIAL_FLOATS:
                return _SPECIAL_FLOATS[value]
            raise _mismatch(t, value)
        try:
            number = float(value)
        except OverflowError:
            raise _BadValue(f"{value!r:.40} is out of range for {t}") from None
        if math.isinf(number):
            # A JSON number past DOUBLE's range (1e400), which Python reads as infinity, as
            # it reads the bare Infinity that is not JSON: infinity is the string form.
            what = "a number" if isinstance(value, float) else f"{value!s:.40}"
            raise _BadValue(f'{what} is beyond the range of {t} (infinity is written "Infinity")')
        if single and math.isfinite(number) and abs(number) > _FLOAT32_MAX:
            raise _BadValue(f"{value!s:.40} is out of range for {t}")
        return number

    return convert


def _json_integer(t: SqlType) -> JsonConverter:
    assert isinstance(t, PrimitiveType)
    bits = INTEGER_BITS[t.name]
    low, high = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1

    def convert(value: Any) -> Any:
        if isinstance(value, bool) or not isinstance(value, int):
            raise _mismatch(t, value)
        if not low <= value <= high:
            raise _BadValue(f"{value} is out of range for {t} ({low} to {high})")
        return value

    return convert


def _json_boolean(t: SqlType) -> JsonConverter:
    def convert(value: Any) -> Any:
        if not isinstance(value, bool):
            raise _mismatch(t, value)
        return value

    return convert


def _json_date(t: SqlType) -> JsonConverter:
    def convert(value: Any) -> Any:
        if isinstance(value, str):
            try:
                return (dt.date.fromisoformat(value) - _EPOCH).days
            except ValueError:
                raise _BadValue(f"expected {t} (days or YYYY-MM-DD), got {value!r:.40}") from None
        if isinstance(value, bool) or not isinstance(value, int):
            raise _mismatch(t, value)
        problem = date_problem(value)
        if problem is not None:
            raise _BadValue(problem)
        return value

    return convert


def _json_timestamp(t: SqlType) -> JsonConverter:
    zoned = t == PrimitiveType("TIMESTAMP")
    name = t.sql()

    def convert(value: Any) -> Any:
        if isinstance(value, str):
            try:
                stamp = dt.datetime.fromisoformat(value)
            except ValueError:
                raise _BadValue(
                    f"expected {t} (µs since the epoch or an ISO timestamp), got {value!r:.40}"
                ) from None
            if not zoned:
                if stamp.tzinfo is not None:
                    raise _BadValue(
                        f"expected {t}, a timestamp without a time zone, got {value!r:.40}"
                    )
                delta = stamp - _EPOCH_NAIVE
            else:
                if stamp.tzinfo is None:
                    stamp = stamp.replace(tzinfo=dt.UTC)
                delta = stamp - _EPOCH_UTC
            value = (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds
        elif isinstance(value, bool) or not isinstance(value, int):
            raise _mismatch(t, value)
        problem = timestamp_problem(value, name)
        if problem is not None:
            raise _BadValue(problem)
        return value

    return convert


def _json_binary(t: SqlType) -> JsonConverter:
    def convert(value: Any) -> Any:
        if not isinstance(value, str):
            raise _mismatch(f"{t} (base64 text)", value)
        try:
            return base64.b64decode(value, validate=True)
        except ValueError:
            raise _BadValue(f"expected {t} (base64 text), got {value!r:.40}") from None

    return convert


_JSON_PRIMITIVES: dict[str, Callable[[SqlType], JsonConverter]] = {
    "STRING": _json_string,
    "DOUBLE": _json_float,
    "FLOAT": _json_float,
    "BIGINT": _json_integer,
    "INT": _json_integer,
    "SMALLINT": _json_integer,
    "TINYINT": _json_integer,
    "BOOLEAN": _json_boolean,
    "DATE": _json_date,
    "TIMESTAMP": _json_timestamp,
    "TIMESTAMP_NTZ": _json_timestamp,
    "BINARY": _json_binary,
}


def _json_decimal(t: DecimalType) -> JsonConverter:
    quantum = decimal.Decimal(1).scaleb(-t.scale)
    max_digits = t.precision - t.scale
    context = decimal.Context(prec=80)

    def convert(value: Any) -> Any:
        if isinstance(value, bool) or not isinstance(value, int | str | decimal.Decimal | float):
            raise _mismatch(f"{t} (a number or its text)", value)
        try:
            exact = decimal.Decimal(value.strip() if isinstance(value, str) else value)
        except decimal.InvalidOperation:
            raise _BadValue(f"expected {t}, got {value!r:.40}") from None
        if not exact.is_finite():
            raise _BadValue(f"expected {t}, got {value!r:.40}")
        if exact != 0 and exact.adjusted() >= max_digits:
            raise _BadValue(f"{value!s:.40} does not fit {t}")
        scaled = exact.quantize(quantum, context=context)
        if scaled != exact:
            raise _BadValue(f"{value!s:.40} has more than {t.scale} decimal places for {t}")
        return scaled

    return convert


def _json_array(t: ArrayType) -> JsonConverter:
    element = _json_converter(t.element)
    nullable = t.contains_null

    def convert(value: Any) -> Any:
        if not isinstance(value, list):
            raise _mismatch(t, value)
        out: list[Any] = []
        for i, item in enumerate(value):
            if item is None:
                if not nullable:
                    bad = _BadValue(f"{t} holds no nulls")
                    bad.segments.append(f"[{i}]")
                    raise bad
                out.append(None)
                continue
            try:
                out.append(element(item))
            except _BadValue as exc:
                exc.segments.append(f"[{i}]")
                raise
        return out

    return convert


# Key types whose keys may be written as integers (dates and timestamps also as ISO text).
_INTEGER_KEYED = {*INTEGER_BITS, "DATE", "TIMESTAMP", "TIMESTAMP_NTZ"}


def _json_map_key(t: SqlType) -> JsonConverter:
    """Map keys are JSON object keys, always text: read them as the key type."""
    inner = _json_converter(t)
    if isinstance(t, PrimitiveType) and t.name in _INTEGER_KEYED:
        integer_only = t.name in INTEGER_BITS

        def convert(key: str) -> Any:
            try:
                number = int(key)
            except ValueError:
                if integer_only:
                    raise _BadValue(f"map key {key!r:.40} is not a {t}") from None
                return inner(key)
            return inner(number)

        return convert
    if isinstance(t, PrimitiveType) and t.name in ("DOUBLE", "FLOAT"):

        def convert_float(key: str) -> Any:
            try:
                return inner(key if key in _SPECIAL_FLOATS else float(key))
            except ValueError:
                raise _BadValue(f"map key {key!r:.40} is not a {t}") from None

        return convert_float
    if t == PrimitiveType("BOOLEAN"):
        return lambda key: inner({"true": True, "false": False}.get(key, key))
    return inner


def _json_map(t: MapType) -> JsonConverter:
    key_of = _json_map_key(t.key)
    value_of = _json_converter(t.value)
    nullable = t.value_contains_null

    def convert(value: Any) -> Any:
        if not isinstance(value, dict):
            raise _mismatch(f"{t} (a JSON object)", value)
        out = []
        for key, item in value.items():
            try:
                converted = key_of(key)
            except _BadValue as exc:
                exc.segments.append(f"[{key!r}]")
                raise
            if item is None:
                if not nullable:
                    bad = _BadValue(f"{t} holds no null values")
                    bad.segments.append(f"[{key!r}]")
                    raise bad
                out.append((converted, None))
                continue
            try:
                out.append((converted, value_of(item)))
            except _BadValue as exc:
                exc.segments.append(f"[{key!r}]")
                raise
        return out

    return convert


def _json_struct(t: StructType) -> JsonConverter:
    fields = {f.name.lower(): (f.name, _json_converter(f.type), f.nullable) for f in t.fields}
    required = [f.name for f in t.fields if not f.nullable]
    names = ", ".join(f.name for f in t.fields)

    def convert(value: Any) -> Any:
        if not isinstance(value, dict):
            raise _mismatch(f"{t} (a JSON object)", value)
        out: dict[str, Any] = {}
        for key, item in value.items():
            entry = fields.get(key.lower()) if isinstance(key, str) else None
            if entry is None:
                bad = _BadValue(f"not a field of the STRUCT (fields: {names})")
                bad.segments.append(f".{key}")
                raise bad
            name, converter, _ = entry
            if item is None:
                continue
            try:
                out[name] = converter(item)
            except _BadValue as exc:
                exc.segments.append(f".{name}")
                raise
        for name in required:
            if out.get(name) is None:
                bad = _BadValue("the field is NOT NULL but has no value")
                bad.segments.append(f".{name}")
                raise bad
        return out

    return convert
