import json
import subprocess
import sys
from pathlib import Path

from motion_adapter.cli import main


def test_inspect_prints_the_header(adapter_dir, capsys):
    assert main(["inspect", str(adapter_dir)]) == 0
    out = capsys.readouterr().out
    for expected in ("kind             motion", "tokens           pll", "preset           motion", "rank / alpha     4 / 4"):
        assert expected in out


def test_inspect_json(adapter_dir, capsys):
    assert main(["inspect", str(adapter_dir), "--json"]) == 0
    header = json.loads(capsys.readouterr().out)
    assert header["tokens"] == ["pll"] and header["file_bytes"] > 0


def test_inspect_bad_file_is_one_clear_line(tmp_path, capsys):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a tensor file")
    assert main(["inspect", str(bad)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("motion-adapter inspect:") and "damaged" in err and "Traceback" not in err


def test_console_script_is_installed():
    script = Path(sys.executable).parent / "motion-adapter"
    result = subprocess.run([str(script), "--help"], capture_output=True, text=True)
    assert result.returncode == 0 and "inspect" in result.stdout
