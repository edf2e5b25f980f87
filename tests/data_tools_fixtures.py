"""Helpers of the data-tools tests: the shipped census-like fixtures and a tabular build helper."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

CENSUS = Path(__file__).resolve().parent / "data" / "census"
CSV = CENSUS / "census.csv"
DTA = CENSUS / "census.dta"
PARQUET = CENSUS / "census.parquet"
SCHEMA = CENSUS / "census.schema.yaml"
TEMPLATE = CENSUS / "person.j2"

BASE: dict[str, Any] = {
    "source": str(CSV),
    "schema_file": str(SCHEMA),
    "target": {"column": "income", "threshold": 50000},
    "question": "Is the yearly income above 50,000 dollars? Answer 1 or 0.",
    "splits": {"train": 0.7, "validation": 0.1, "test": 0.2},
    "seed": 7,
}


def options(**changes: Any) -> Any:
    """TabularOptions from BASE with top-level keys replaced (None removes a key)."""
    from cruijff_kit_tabular.options import TabularOptions

    data = copy.deepcopy(BASE)
    for key, value in changes.items():
        if value is None:
            data.pop(key, None)
        else:
            data[key] = value
    return TabularOptions.model_validate(data)


def build(dst: Path, base_dir: Path | None = None, **changes: Any) -> Any:
    """Generate into ``dst`` (a folder); returns the Built result."""
    from cruijff_kit_tabular.generate import build as _build

    return _build(options(**changes), base_dir or CENSUS, dst)


def splits_of(path: Path) -> dict[str, list[dict[str, Any]]]:
    """The generated JSON instruct file's splits."""
    return json.loads(path.read_text(encoding="utf-8"))


# --------------------------------------------------------------------------- SAS transport (XPORT v5)
def _ibm_double(x: float | None) -> bytes:
    """An IEEE double as an IBM mainframe double (SAS transport files); None is SAS's missing `.`."""
    import math

    if x is None or (isinstance(x, float) and math.isnan(x)):
        return b"." + bytes(7)
    if x == 0:
        return bytes(8)
    sign = 0x80 if x < 0 else 0
    _, e = math.frexp(abs(x))
    exp16 = math.ceil(e / 4)
    frac = int(round(abs(x) / 16.0 ** exp16 * 2 ** 56))
    if frac >= 2 ** 56:
        frac >>= 4
        exp16 += 1
    return bytes([sign | (exp16 + 64)]) + frac.to_bytes(7, "big")


def write_xport(path: Path, df: Any, name: str = "CENSUS") -> Path:
    """Write a DataFrame (numeric and text columns, names of at most 8 characters) as SAS XPORT v5."""
    import struct

    def rec(text: str) -> bytes:
        data = text.encode("ascii")
        assert len(data) <= 80
        return data.ljust(80, b" ")

    stamp = "01JUN24:00:00:00"
    columns = list(df.columns)
    kinds = {c: ("num" if df[c].dtype.kind in "if" else "char") for c in columns}
    widths = {c: 8 if kinds[c] == "num" else max(1, int(df[c].astype(str).str.len().max())) for c in columns}
    out = [rec("HEADER RECORD*******LIBRARY HEADER RECORD!!!!!!!" + "0" * 30),
           rec("SAS     SAS     SASLIB  9.4     Linux   " + " " * 24 + stamp), rec(stamp),
           rec("HEADER RECORD*******MEMBER  HEADER RECORD!!!!!!!000000000000000001600000000140"),
           rec("HEADER RECORD*******DSCRPTR HEADER RECORD!!!!!!!" + "0" * 30),
           rec(f"SAS     {name:<8}SASDATA 9.4     Linux   " + " " * 24 + stamp),
           rec(stamp + " " * 16 + " " * 40 + " " * 8),
           rec(f"HEADER RECORD*******NAMESTR HEADER RECORD!!!!!!!000000{len(columns):04d}" + "0" * 20)]
    names, pos = b"", 0
    for i, c in enumerate(columns):
        assert len(c) <= 8, c
        names += struct.pack(">hhhh8s40s8shhh2s8shhl52s", 1 if kinds[c] == "num" else 2, 0, widths[c], i + 1,
                             c.ljust(8).encode(), b" " * 40, b" " * 8, 0, 0, 0, b"\0\0", b" " * 8, 0, 0,
                             pos, bytes(52))
        pos += widths[c]
    out.append(names.ljust(-(-len(names) // 80) * 80, b" "))
    out.append(rec("HEADER RECORD*******OBS     HEADER RECORD!!!!!!!" + "0" * 30))
    body = b""
    for _, row in df.iterrows():
        for c in columns:
            v = row[c]
            body += _ibm_double(None if v is None or v != v else float(v)) if kinds[c] == "num" \
                else str(v).encode("ascii").ljust(widths[c], b" ")
    out.append(body.ljust(-(-len(body) // 80) * 80, b" "))
    path.write_bytes(b"".join(out))
    return path
