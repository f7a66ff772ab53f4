"""A labels CSV for a folder of images (data.labels_csv): a class label column and/or attribute columns."""

from __future__ import annotations

import csv
from pathlib import Path

import torch

from ..errors import DataError


def read_labels_csv(csv_path: Path, files: list[Path], root: Path):
    """Return (labels or None, class_names, attributes or None, attribute_names) for ``files``."""
    if not csv_path.is_file():
        raise DataError(f"labels CSV not found: {csv_path} (data.labels_csv)")
    with open(csv_path, newline="") as fh:
        rows = list(csv.reader(fh))
    if len(rows) < 2:
        raise DataError(f"{csv_path}: expected a header row (file, then column names) and at least one data row")
    header, body = rows[0], rows[1:]
    columns = header[1:]
    table: dict[str, list[int]] = {}
    for line_no, row in enumerate(body, start=2):
        if not row:
            continue
        try:
            table[row[0]] = [int(float(v)) for v in row[1:]]
        except ValueError:
            raise DataError(f"{csv_path}, line {line_no}: values after the file name must be integers, got {row[1:]}") from None
    values, missing = [], []
    for f in files:
        rel = f.relative_to(root).as_posix()
        key = rel if rel in table else f.name
        if key not in table:
            missing.append(rel)
            values.append([0] * len(columns))
        else:
            values.append(table[key])
    if missing:
        raise DataError(
            f"{csv_path}: {len(missing)} image(s) have no row, e.g. {missing[:3]}. "
            "Add a row per image (file name relative to the folder, or the bare file name)."
        )
    matrix = torch.tensor(values, dtype=torch.long)
    label_cols = [i for i, c in enumerate(columns) if c.lower() in ("label", "class")]
    labels, class_names = None, []
    if label_cols:
        labels = matrix[:, label_cols[0]]
        class_names = [str(i) for i in range(int(labels.max()) + 1)]
    attr_cols = [i for i in range(len(columns)) if i not in label_cols]
    attributes = matrix[:, attr_cols].float() if attr_cols else None
    return labels, class_names, attributes, [columns[i] for i in attr_cols]
