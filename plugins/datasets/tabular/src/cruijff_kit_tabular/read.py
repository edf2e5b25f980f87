"""Read a table (CSV, TSV, parquet, Stata, SAS, Excel) into a pandas DataFrame of object columns."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cruijff_kit import DataError
from cruijff_kit.data import shown

EXTENSIONS = {
    ".csv": "csv", ".tsv": "tsv", ".tab": "tsv", ".txt": "tsv", ".parquet": "parquet", ".pq": "parquet",
    ".dta": "stata", ".sas7bdat": "sas", ".xpt": "sas", ".xport": "sas", ".xlsx": "excel", ".xls": "excel",
    ".xlsm": "excel",
}


def detect_format(path: Path, fmt: str = "auto") -> str:
    """The format of a file, by ``fmt`` or else by its extension (``.csv.gz`` counts as ``.csv``)."""
    if fmt != "auto":
        return fmt
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] in (".gz", ".bz2", ".zip", ".xz", ".zst") and len(suffixes) > 1:
        suffixes = suffixes[:-1]
    ext = suffixes[-1] if suffixes else ""
    if ext not in EXTENSIONS:
        raise DataError(f"{shown(path)}: cannot tell the file format from the extension `{ext or '(none)'}`. "
                        f"Use one of {', '.join(sorted(EXTENSIONS))}, or set `format:` "
                        "(csv, tsv, parquet, stata, sas, excel).")
    return EXTENSIONS[ext]


def read_table(path: Path, fmt: str = "auto", sheet: str | int | None = None) -> Any:
    """The whole table as a DataFrame; unreadable files raise a DataError naming the file."""
    import pandas as pd

    if not path.exists():
        raise DataError(f"{shown(path)} does not exist. Check `source` (relative paths are relative to the "
                        "config or spec file's folder).")
    if path.is_dir():
        raise DataError(f"{shown(path)} is a folder; `source` must be one table file.")
    kind = detect_format(path, fmt)
    try:
        if kind == "csv":
            df = pd.read_csv(path, dtype=object, keep_default_na=False)
        elif kind == "tsv":
            df = pd.read_csv(path, sep="\t", dtype=object, keep_default_na=False)
        elif kind == "parquet":
            df = pd.read_parquet(path)
        elif kind == "stata":
            df = pd.read_stata(path, convert_categoricals=False)
        elif kind == "sas":
            df = pd.read_sas(path, format="xport" if path.suffix.lower() in (".xpt", ".xport") else None,
                             encoding="infer")
        else:
            df = pd.read_excel(path, sheet_name=0 if sheet is None else sheet, dtype=object)
    except ImportError as exc:
        raise DataError(f"{shown(path)}: reading {kind} files needs a package that is missing ({exc}). "
                        "Install it (Excel: openpyxl) or convert the file to CSV or parquet.") from None
    except UnicodeDecodeError as exc:
        raise DataError(f"{shown(path)}: not valid UTF-8 ({exc.reason} at byte {exc.start}). Save the file as "
                        "UTF-8, or convert it to parquet.") from None
    except Exception as exc:  # pandas raises many types for a bad file
        raise DataError(f"{shown(path)}: cannot be read as {kind} ({type(exc).__name__}: {exc}). Check the "
                        "file, or set `format:` if its extension is misleading.") from None
    if isinstance(df, dict):  # several sheets
        raise DataError(f"{shown(path)}: give one `sheet`.")
    df.columns = [str(c) for c in df.columns]
    return df


def cell_text(value: Any) -> str | None:
    """A cell as text, or None when it is empty (NaN, None, NaT, pandas NA, blank text)."""
    import pandas as pd

    if value is None:
        return None
    try:
        if pd.isna(value):
            return None
    except (TypeError, ValueError):
        pass
    from cruijff_kit_tabular.schema import code_text

    if hasattr(value, "item") and not isinstance(value, str | bytes):
        try:
            value = value.item()
        except (ValueError, AttributeError):
            pass
    if isinstance(value, bytes):
        value = value.decode("utf-8", errors="replace")
    text = code_text(value)
    return text or None
