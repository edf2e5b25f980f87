"""Write the census-like fixtures: census.csv (200 rows), census.dta and census.parquet (same rows).

Seeded and self-contained: `python tests/data/census/make_census.py` rewrites the same files.
Fields: person_id, age, sex (1 male, 2 female), education (1-5 codes), marital_status, occupation,
hours_per_week (some missing: empty), region, income (dollars; -9 = not reported).
"""

from __future__ import annotations

import csv
import datetime as dt
import random
from pathlib import Path

HERE = Path(__file__).resolve().parent
N = 200
OCCUPATIONS = ["clerical", "craft", "managerial", "professional", "sales", "service", "transport"]
MARITAL = ["never married", "married", "divorced", "widowed"]
REGIONS = ["northeast", "midwest", "south", "west"]
COLUMNS = ["person_id", "age", "sex", "education", "marital_status", "occupation", "hours_per_week",
           "region", "income"]


def rows(seed: int = 20240601) -> list[dict[str, object]]:
    """The seeded rows (income grows with education, age and hours)."""
    rng = random.Random(seed)
    out = []
    for i in range(N):
        age = rng.randint(18, 79)
        education = rng.choices([1, 2, 3, 4, 5], weights=[10, 30, 25, 25, 10])[0]
        hours = rng.choice([20, 25, 30, 35, 40, 40, 40, 45, 50, 60])
        occupation = rng.choice(OCCUPATIONS)
        base = 12000 + 7000 * education + 400 * min(age - 18, 35) + 500 * (hours - 30)
        base += 9000 if occupation in ("managerial", "professional") else 0
        income = max(0, int(round(base * rng.uniform(0.6, 1.5), -2)))
        out.append({
            "person_id": 1000 + i,
            "age": age,
            "sex": rng.choice([1, 2]),
            "education": education,
            "marital_status": rng.choice(MARITAL),
            "occupation": occupation,
            "hours_per_week": "" if rng.random() < 0.08 else hours,
            "region": rng.choice(REGIONS),
            "income": -9 if rng.random() < 0.04 else income,
        })
    return out


def main() -> None:
    import pandas as pd

    data = rows()
    with (HERE / "census.csv").open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(data)
    df = pd.read_csv(HERE / "census.csv")  # hours_per_week: float with NaN where empty
    df.to_parquet(HERE / "census.parquet", index=False)
    df.to_stata(HERE / "census.dta", write_index=False, time_stamp=dt.datetime(2024, 6, 1),
                data_label="census-like fixture", version=118)


if __name__ == "__main__":
    main()
