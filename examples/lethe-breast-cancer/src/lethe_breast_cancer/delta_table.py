"""Write WDBC as a Delta Lake table, offline: the Delta-backed variant of this plugin.

    python -m lethe_breast_cancer.delta_table /tmp/lake/wdbc

Columns: ``patient`` (the subject id, ``patient-0001`` ..), ``split`` (the same split by subject as
``load_examples``), ``label`` and the 30 measurements. Register a model that reads the table where it
lies (Lethe keeps only an index of pseudonymous keys) and erases patients in it:

    lethe models register bc-lake --spec breast_cancer --config '{"store": "delta", "purge_after_s": 0,
      "source": {"uri": "/tmp/lake/wdbc", "subject_column": "patient", "split_column": "split"}}'
"""

from __future__ import annotations

import sys

from lethe_breast_cancer.spec import FEATURES, BreastCancerSpec


def write_table(uri: str) -> int:
    """Overwrite ``uri`` with the data set as one Delta table; returns the rows written."""
    import pyarrow as pa
    from deltalake import write_deltalake

    examples = BreastCancerSpec().load_examples()
    columns = {"patient": [e.subject_id for e in examples], "split": [e.split for e in examples],
               "label": [e.label for e in examples]}
    columns.update({name: [e.features[name] for e in examples] for name in FEATURES})
    write_deltalake(uri, pa.table(columns), mode="overwrite")
    return len(examples)


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python -m lethe_breast_cancer.delta_table TABLE_DIR")
    print(f"{write_table(sys.argv[1])} rows written to {sys.argv[1]}")
