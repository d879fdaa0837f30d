"""Databricks column types: a small tree, its parser, and its forms on each wire.

    DataType
     ├── Primitive     TINYINT SMALLINT INT BIGINT FLOAT DOUBLE STRING BOOLEAN BINARY
     │                 DATE TIMESTAMP TIMESTAMP_NTZ VARIANT
     ├── DecimalType   DECIMAL(p, s)
     ├── ArrayType     ARRAY<T>
     ├── MapType       MAP<K, V>
     └── StructType    STRUCT<name: T [NOT NULL] [COMMENT '...'], ...>

`parse_type` reads the type text Unity Catalog and Databricks SQL use (any case, the
usual aliases). Each type knows its SQL text, its Arrow type (the form batches travel in),
its Postgres type (the documented mapping in README: complex types are `jsonb`) and its
JSON Schema. The proto2 form is derived in `workloads.proto`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from dwbench.errors import InvalidSchemaError

MAX_DECIMAL_PRECISION = 38
MAX_NESTING = 32

# name -> (Arrow type, Postgres type)
_PRIMITIVES: dict[str, tuple[pa.DataType, str]] = {
    "TINYINT": (pa.int8(), "smallint"),  # Postgres has no one-byte integer
    "SMALLINT": (pa.int16(), "smallint"),
    "INT": (pa.int32(), "integer"),
    "BIGINT": (pa.int64(), "bigint"),
    "FLOAT": (pa.float32(), "real"),
    "DOUBLE": (pa.float64(), "double precision"),
    "STRING": (pa.string(), "text"),
    "BOOLEAN": (pa.bool_(), "boolean"),
    "BINARY": (pa.binary(), "bytea"),
    "DATE": (pa.date32(), "date"),
    "TIMESTAMP": (pa.timestamp("us", tz="UTC"), "timestamptz"),
    "TIMESTAMP_NTZ": (pa.timestamp("us"), "timestamp"),
    # Carried as JSON text in this tool; no local stand-in stores it yet.
    "VARIANT": (pa.string(), "jsonb"),
}
_ALIASES = {
    "BYTE": "TINYINT",
    "SHORT": "SMALLINT",
    "INTEGER": "INT",
    "LONG": "BIGINT",
    "REAL": "FLOAT",
    "BOOL": "BOOLEAN",
    "VARCHAR": "STRING",
    "CHAR": "STRING",
    "TEXT": "STRING",
    "TIMESTAMP_LTZ": "TIMESTAMP",
    "DEC": "DECIMAL",
    "NUMERIC": "DECIMAL",
}
INTEGER_RANGES = {
    "TINYINT": (-(2**7), 2**7 - 1),
    "SMALLINT": (-(2**15), 2**15 - 1),
    "INT": (-(2**31), 2**31 - 1),
    "BIGINT": (-(2**63), 2**63 - 1),
}
SUPPORTED = (*_PRIMITIVES, "DECIMAL(p,s)", "ARRAY<T>", "MAP<K,V>", "STRUCT<...>")


class DataType:
    """A column type. Subclasses are frozen dataclasses, so types compare by value."""

    def sql(self) -> str:
        raise NotImplementedError

    def arrow(self) -> pa.DataType:
        raise NotImplementedError

    def postgres(self) -> str:
        return "jsonb"

    def json_schema(self) -> dict[str, Any]:
        raise NotImplementedError

    @property
    def is_complex(self) -> bool:
        return isinstance(self, ArrayType | MapType | StructType)

    def walk(self) -> list[DataType]:
        """This type and every type nested in it."""
        return [self]

    def __str__(self) -> str:
        return self.sql()


@dataclass(frozen=True)
class Primitive(DataType):
    name: str

    def sql(self) -> str:
        return self.name

    def arrow(self) -> pa.DataType:
        return _PRIMITIVES[self.name][0]

    def postgres(self) -> str:
        return _PRIMITIVES[self.name][1]

    def json_schema(self) -> dict[str, Any]:
        name = self.name
        if name in INTEGER_RANGES:
            low, high = INTEGER_RANGES[name]
            return {"type": "integer", "minimum": low, "maximum": high}
        if name in ("FLOAT", "DOUBLE"):
            return {"type": "number"}
        if name == "BOOLEAN":
            return {"type": "boolean"}
        if name == "DATE":
            return {"type": "string", "format": "date"}
        if name in ("TIMESTAMP", "TIMESTAMP_NTZ"):
            return {"type": "string", "format": "date-time"}
        if name == "BINARY":
            return {"type": "string", "contentEncoding": "base64"}
        if name == "VARIANT":
            return {}
        return {"type": "string"}


@dataclass(frozen=True)
class DecimalType(DataType):
    precision: int = 10
    scale: int = 0

    def sql(self) -> str:
        return f"DECIMAL({self.precision},{self.scale})"

    def arrow(self) -> pa.DataType:
        return pa.decimal128(self.precision, self.scale)

    def postgres(self) -> str:
        return f"numeric({self.precision},{self.scale})"

    def json_schema(self) -> dict[str, Any]:
        digits = self.precision - self.scale
        fraction = rf"(\.[0-9]{{1,{self.scale}}})?" if self.scale else ""
        return {"type": "string", "pattern": rf"^-?[0-9]{{1,{max(digits, 1)}}}{fraction}$"}


@dataclass(frozen=True)
class ArrayType(DataType):
    element: DataType
    contains_null: bool = True

    def sql(self) -> str:
        return f"ARRAY<{self.element.sql()}>"

    def arrow(self) -> pa.DataType:
        return pa.list_(pa.field("element", self.element.arrow(), self.contains_null))

    def json_schema(self) -> dict[str, Any]:
        return {"type": "array", "items": self.element.json_schema()}

    def walk(self) -> list[DataType]:
        return [self, *self.element.walk()]


@dataclass(frozen=True)
class MapType(DataType):
    key: DataType
    value: DataType
    value_contains_null: bool = True

    def sql(self) -> str:
        return f"MAP<{self.key.sql()},{self.value.sql()}>"

    def arrow(self) -> pa.DataType:
        return pa.map_(
            pa.field("key", self.key.arrow(), False),
            pa.field("value", self.value.arrow(), self.value_contains_null),
        )

    def json_schema(self) -> dict[str, Any]:
        return {"type": "object", "additionalProperties": self.value.json_schema()}

    def walk(self) -> list[DataType]:
        return [self, *self.key.walk(), *self.value.walk()]


@dataclass(frozen=True)
class StructField:
    name: str
    type: DataType
    nullable: bool = True
    comment: str | None = None

    def sql(self) -> str:
        text = f"{quote_identifier(self.name)}: {self.type.sql()}"
        if not self.nullable:
            text += " NOT NULL"
        if self.comment:
            text += f" COMMENT {sql_string(self.comment)}"
        return text


@dataclass(frozen=True)
class StructType(DataType):
    fields: tuple[StructField, ...]

    def sql(self) -> str:
        return f"STRUCT<{', '.join(f.sql() for f in self.fields)}>"

    def arrow(self) -> pa.DataType:
        return pa.struct([pa.field(f.name, f.type.arrow(), f.nullable) for f in self.fields])

    def json_schema(self) -> dict[str, Any]:
        return {
            "type": "object",
            "properties": {f.name: f.type.json_schema() for f in self.fields},
            "required": [f.name for f in self.fields if not f.nullable],
            "additionalProperties": False,
        }

    def walk(self) -> list[DataType]:
        return [self, *(t for f in self.fields for t in f.type.walk())]


def quote_identifier(name: str) -> str:
    """A name as Databricks SQL writes it: bare when plain, else in backticks."""
    if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
        return name
    return "`" + name.replace("`", "``") + "`"


def sql_string(text: str) -> str:
    """A Databricks SQL string literal: backslash escapes, as Spark SQL reads them."""
    escaped = (
        text.replace("\\", "\\\\")
        .replace("'", "\\'")
        .replace("\n", "\\n")
        .replace("\r", "\\r")
        .replace("\t", "\\t")
        .replace("\0", "\\u0000")  # not \\0: "\\010" would read as an octal escape
    )
    return f"'{escaped}'"


# -- parsing ----------------------------------------------------------------------------

_TOKEN = re.compile(
    r"""(?:
        (?P<skip>\s+|--[^\n]*)
      | (?P<quoted>`(?:[^`]|``)*`)
      | (?P<string>'(?:[^'\\]|\\.)*'|"(?:[^"\\]|\\.)*")
      | (?P<number>-?\d+(?:\.\d+)?)
      | (?P<word>[A-Za-z_][A-Za-z0-9_]*)
      | (?P<punct>[<>(),:;.=])
    )""",
    re.VERBOSE | re.DOTALL,
)


@dataclass(frozen=True)
class Token:
    kind: str  # quoted, string, number, word, punct, end
    text: str
    at: int

    @property
    def upper(self) -> str:
        return self.text.upper()


def tokenize(text: str) -> list[Token]:
    tokens: list[Token] = []
    pos = 0
    while pos < len(text):
        match = _TOKEN.match(text, pos)
        if match is None:
            raise InvalidSchemaError(f"unexpected character {text[pos]!r} at position {pos}")
        kind = match.lastgroup or "skip"
        if kind != "skip":
            tokens.append(Token(kind, match.group(kind), match.start()))
        pos = match.end()
    tokens.append(Token("end", "", len(text)))
    return tokens


class TokenStream:
    def __init__(self, text: str) -> None:
        self.text = text
        self.tokens = tokenize(text)
        self.pos = 0

    @property
    def peek(self) -> Token:
        return self.tokens[self.pos]

    def next(self) -> Token:
        token = self.tokens[self.pos]
        if token.kind != "end":
            self.pos += 1
        return token

    def accept(self, *words: str) -> bool:
        """Consume the words (keywords or punctuation) if they come next, in order."""
        for i, word in enumerate(words):
            token = self.tokens[min(self.pos + i, len(self.tokens) - 1)]
            if token.upper != word.upper() or token.kind in ("string", "quoted"):
                return False
        self.pos += len(words)
        return True

    def expect(self, word: str, what: str) -> None:
        if not self.accept(word):
            raise self.error(f"expected {word!r} {what}")

    def error(self, message: str) -> InvalidSchemaError:
        token = self.peek
        found = "the end of the text" if token.kind == "end" else repr(token.text)
        return InvalidSchemaError(f"{message}, found {found} at position {token.at}")

    def identifier(self, what: str) -> str:
        token = self.next()
        if token.kind == "quoted":
            return token.text[1:-1].replace("``", "`")
        if token.kind == "word":
            return token.text
        self.pos -= 1 if token.kind != "end" else 0
        raise self.error(f"expected {what}")

    def string(self, what: str) -> str:
        token = self.next()
        if token.kind != "string":
            self.pos -= 1 if token.kind != "end" else 0
            raise self.error(f"expected a quoted string {what}")
        text = _unescape(token.text[1:-1])
        while self.peek.kind == "string":  # adjacent literals concatenate, as in Spark SQL
            text += _unescape(self.next().text[1:-1])
        return text


_ESCAPES = {"n": "\n", "r": "\r", "t": "\t", "0": "\0", "b": "\b"}


def _unescape(body: str) -> str:
    return re.sub(r"\\(.)", lambda m: _ESCAPES.get(m.group(1), m.group(1)), body, flags=re.DOTALL)


def parse_type(text: str) -> DataType:
    """A type from its SQL text, e.g. `array<struct<lat:double,lon:double>>`."""
    stream = TokenStream(text)
    result = read_type(stream, 0)
    if stream.peek.kind != "end":
        raise stream.error(f"unexpected text after the type {result.sql()}")
    return result


def read_type(stream: TokenStream, depth: int) -> DataType:
    if depth > MAX_NESTING:
        raise InvalidSchemaError(f"types nest deeper than {MAX_NESTING} levels")
    token = stream.next()
    if token.kind != "word":
        stream.pos -= 1 if token.kind != "end" else 0
        raise stream.error("expected a type")
    name = _ALIASES.get(token.upper, token.upper)
    if name == "ARRAY":
        stream.expect("<", "after ARRAY")
        element = read_type(stream, depth + 1)
        stream.expect(">", "to close ARRAY<")
        return ArrayType(element)
    if name == "MAP":
        stream.expect("<", "after MAP")
        key = read_type(stream, depth + 1)
        stream.expect(",", "between the key and value types of MAP")
        value = read_type(stream, depth + 1)
        stream.expect(">", "to close MAP<")
        if key.is_complex or key == Primitive("VARIANT"):
            raise InvalidSchemaError(f"MAP keys must be a primitive type, not {key.sql()}")
        return MapType(key, value)
    if name == "STRUCT":
        stream.expect("<", "after STRUCT")
        fields: list[StructField] = []
        if not stream.accept(">"):
            while True:
                fields.append(_read_struct_field(stream, depth))
                if stream.accept(">"):
                    break
                stream.expect(",", "between STRUCT fields")
        check_names([f.name for f in fields], "STRUCT field")
        return StructType(tuple(fields))
    if name == "DECIMAL":
        precision, scale = 10, 0
        if stream.accept("("):
            precision = _integer(stream, "as the DECIMAL precision")
            if stream.accept(","):
                scale = _integer(stream, "as the DECIMAL scale")
            stream.expect(")", "to close DECIMAL(")
        if not 1 <= precision <= MAX_DECIMAL_PRECISION:
            raise InvalidSchemaError(
                f"DECIMAL({precision},{scale}): precision must be 1 to {MAX_DECIMAL_PRECISION}"
            )
        if not 0 <= scale <= precision:
            raise InvalidSchemaError(
                f"DECIMAL({precision},{scale}): scale must be 0 to the precision ({precision})"
            )
        return DecimalType(precision, scale)
    if name in _PRIMITIVES:
        if name == "STRING" and stream.accept("("):  # VARCHAR(n), CHAR(n): stored as STRING
            _integer(stream, "as the length")
            stream.expect(")", "to close the length")
        return Primitive(name)
    raise InvalidSchemaError(
        f"unknown column type {token.text!r}; supported: {', '.join(SUPPORTED)}"
    )


def _read_struct_field(stream: TokenStream, depth: int) -> StructField:
    name = stream.identifier("a STRUCT field name")
    stream.accept(":")
    field_type = read_type(stream, depth + 1)
    nullable = not stream.accept("NOT", "NULL")
    comment = stream.string("after COMMENT") if stream.accept("COMMENT") else None
    return StructField(name, field_type, nullable, comment)


def _integer(stream: TokenStream, what: str) -> int:
    token = stream.next()
    if token.kind != "number":
        stream.pos -= 1 if token.kind != "end" else 0
        raise stream.error(f"expected a whole number {what}")
    return int(token.text)


def check_names(names: list[str], what: str) -> None:
    seen: set[str] = set()
    for name in names:
        if not name or len(name) > 255 or any(ord(c) < 32 for c in name):
            raise InvalidSchemaError(
                f"{what} name {name!r} is empty, too long or has control characters"
            )
        if name.lower() in seen:  # names are case-insensitive in Unity Catalog
            raise InvalidSchemaError(f"duplicate {what} {name!r}", column=name)
        seen.add(name.lower())
