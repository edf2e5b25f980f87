"""Safe file helpers for plugins: atomic writes, locked read-modify-write, JSON lines, YAML files that
fail with a message naming the file, scrubbing of secrets from anything about to be written, and byte
counts for messages (:func:`human_bytes`).

What a user wrote is read within bounds: a key twice in one mapping or object, nesting deeper than 100
levels and YAML alias bombs are errors naming the file (:func:`read_yaml`, :func:`read_json`,
:func:`read_jsonl`, :func:`parse_json_text`), never a RecursionError or the last key silently winning.

Every write is atomic (a temporary file, then a rename), so a killed process never leaves half a file.
"""

from cruijff_kit._base.fileio import (
    append_jsonl,
    atomic_write_json,
    atomic_write_text,
    atomic_write_yaml,
    dump_yaml,
    load_yaml,
    locked,
    read_json,
    read_jsonl,
    update_json,
)
from cruijff_kit._base.ownership import check_writable
from cruijff_kit._base.parsing import parse_json_text
from cruijff_kit._base.secrets import (
    is_secret_name,
    literal_secret,
    refuse_literal_secrets,
    refuse_secret_values,
    scrub,
    secret_values,
)
from cruijff_kit._base.sizes import human_bytes
from cruijff_kit._base.yamlfile import read_yaml

__all__ = [
    "append_jsonl", "atomic_write_json", "atomic_write_text", "atomic_write_yaml", "check_writable", "dump_yaml",
    "human_bytes", "is_secret_name", "literal_secret", "load_yaml", "locked", "parse_json_text", "read_json",
    "read_jsonl", "read_yaml", "refuse_literal_secrets", "refuse_secret_values", "scrub", "secret_values",
    "update_json",
]
