"""Training data: every common format read, converted for TRL, and checked before a run.

`load_training_data` gives `datasets.Dataset`s (importing `datasets` only when called);
`check_dataset` streams a file or folder and reports errors and warnings with file and line.
"""

from runner.data.check import CheckReport, check_dataset, rows_text
from runner.data.errors import DataError
from runner.data.formats import FORMATS, detect_format
from runner.data.load import load_training_data

__all__ = [
    "FORMATS",
    "CheckReport",
    "DataError",
    "check_dataset",
    "detect_format",
    "load_training_data",
    "rows_text",
]
