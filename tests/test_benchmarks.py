"""Each benchmark answers --help with what it measures, and runs nothing."""

import importlib.util
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).parent.parent / "benchmarks"


@pytest.mark.parametrize(
    "path",
    [path for path in sorted(BENCHMARKS.glob("*.py")) if path.stem != "ablation"],  # `toyworld ablate`'s own flags
    ids=lambda path: path.stem,
)
def test_help_describes_the_benchmark_and_runs_nothing(path, capsys):
    spec = importlib.util.spec_from_file_location(f"benchmark_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    with pytest.raises(SystemExit) as exit_info:
        module.main(["--help"])
    assert exit_info.value.code == 0 and module.__doc__.splitlines()[0] in capsys.readouterr().out
