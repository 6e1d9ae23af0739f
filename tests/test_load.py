"""Timing commands watch how busy the machine is and say so: figures taken under load are not an
idle machine's."""

import json
import subprocess
import sys
import time

from typer.testing import CliRunner

from vitedge.cli.app import app
from vitedge.machine_load import LoadWatch

runner = CliRunner()
SPIN = "import time\nend = time.time() + {s}\nwhile time.time() < end: pass"


def test_other_processes_on_the_cores_are_seen_and_our_own_work_is_not():
    import os

    cpus = os.cpu_count() or 1
    spinners = [subprocess.Popen([sys.executable, "-c", SPIN.format(s=1.5)]) for _ in range(cpus)]
    try:
        time.sleep(0.2)
        with LoadWatch() as watch:
            time.sleep(1.0)
    finally:
        for spinner in spinners:
            spinner.wait()
    assert watch.load is not None and watch.load.busy and watch.load.others > 0.5, watch.load
    with LoadWatch() as own:  # this process spinning is not "another process"
        end = time.time() + 0.5
        while time.time() < end:
            pass
    assert own.load is not None and own.load.others < watch.load.others - 0.3, own.load


def test_bench_records_the_load_and_warns_when_the_machine_was_busy(tmp_path, monkeypatch):
    monkeypatch.setattr("vitedge.machine_load.BUSY_SHARE", 0.0)  # any load counts: the warning must show
    out = tmp_path / "bench.json"
    result = runner.invoke(app, ["bench", "builtin:digits-vit", "--runs", "2", "--warmup", "0", "-o", str(out)])
    assert result.exit_code == 0, result.output
    load = json.loads(out.read_text())["load"]
    assert set(load) == {"others", "load_average", "cpus", "seconds", "busy"} and load["busy"] is True
    assert "the machine was busy while timing" in " ".join(result.output.split())
