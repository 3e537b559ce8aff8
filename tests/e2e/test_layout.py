"""The source's layout keeps its promise: no import cycle between Rust files of src/."""

import os
import subprocess
import sys

ROOT = os.path.join(os.path.dirname(__file__), "..", "..")


def test_no_import_cycle_between_files_of_src():
    found = subprocess.run([sys.executable, os.path.join(ROOT, ".ci", "import_cycles.py"),
                            os.path.join(ROOT, "src")], capture_output=True, text=True)
    assert found.returncode == 0, found.stdout
