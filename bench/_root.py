"""Importing this puts the repository root on ``sys.path``, so that benchmarks run as
``python bench/<name>.py`` can import the test fixtures (``tests.fixtures``)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
