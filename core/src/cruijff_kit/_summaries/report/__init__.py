"""``ck report``: one self-contained HTML page per experiment (``report.html`` in its folder)."""
