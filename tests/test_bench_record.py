"""scripts/bench_cpu.py --write: the latest run's table replaces the previous one; the rest of the file stays."""

import importlib.util
import sys
from pathlib import Path

SCRIPTS = Path(__file__).parents[1] / "scripts"


def _bench_cpu():
    sys.path.insert(0, str(SCRIPTS))
    try:
        spec = importlib.util.spec_from_file_location("bench_cpu", SCRIPTS / "bench_cpu.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    finally:
        sys.path.remove(str(SCRIPTS))


def test_the_latest_table_replaces_the_last_and_keeps_the_rest(tmp_path):
    bench_cpu = _bench_cpu()
    doc = tmp_path / "benchmarks.md"
    doc.write_text("# Benchmarks\n\nhand-written notes\n")
    bench_cpu.record(doc, ["| first run |"])
    doc.write_text(doc.read_text() + "\n## Later section\n")
    bench_cpu.record(doc, ["| second run |"])
    text = doc.read_text()
    assert "hand-written notes" in text and "## Later section" in text
    assert "| second run |" in text and "| first run |" not in text
    assert text.count(bench_cpu.LATEST) == 1 and text.index("second run") < text.index("Later section")
