"""Ready-made constraints for sgflow programs and runtime requests: a regex library and
JSON-schema helpers. Light to import (no torch, no runtime)."""

from grammars.json_schema import (
    is_pydantic_model,
    schema_from_pydantic,
    to_schema_dict,
    to_schema_string,
)
from grammars.regex import (
    BOOLEAN,
    EMAIL,
    FLOAT,
    INTEGER,
    IPV4,
    ISO_DATE,
    ISO_DATETIME,
    ISO_TIME,
    PHONE,
    URL,
    UUID,
    NamedRegex,
    integer_range,
)

__all__ = [
    "BOOLEAN",
    "EMAIL",
    "FLOAT",
    "INTEGER",
    "IPV4",
    "ISO_DATE",
    "ISO_DATETIME",
    "ISO_TIME",
    "PHONE",
    "URL",
    "UUID",
    "NamedRegex",
    "integer_range",
    "is_pydantic_model",
    "schema_from_pydantic",
    "to_schema_dict",
    "to_schema_string",
]
