"""tools/check_docs_commands.py: commands are found in the docs, wrong ones are caught, and the
commands of README.md and docs/*.md parse as written."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("check_docs_commands",
                                               ROOT / "tools" / "check_docs_commands.py")
assert _spec is not None and _spec.loader is not None
checker = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = checker  # dataclasses look their module up there
_spec.loader.exec_module(checker)
SCRIPTS = checker.console_scripts(ROOT)

DOC = """\
# title

```bash
.venv/bin/netsim theorem --trials 5 --json   # a comment
flsim run --clients 2 \\
    --out runs/x --mode simulation
make test && make nosuch
FOO=1 .venv/bin/python tools/bench_netsim.py --hosts 16
```

```
tree/
  not a command
netsim simulate ... --matrix flows.csv
flsim report runs/x
```

```json
{"flsim": "not a command"}
```

```console
$ netsim plot --out-dir plots/ --policies ecmp
```
"""


def commands(tmp_path: Path, text: str) -> list:
    doc = tmp_path / "doc.md"
    doc.write_text(text)
    return checker.extract_commands(doc, SCRIPTS)


def test_extracts_commands_from_shell_and_command_like_blocks(tmp_path: Path) -> None:
    found = commands(tmp_path, DOC)
    assert [c.argv for c in found] == [
        (".venv/bin/netsim", "theorem", "--trials", "5", "--json"),
        ("flsim", "run", "--clients", "2", "--out", "runs/x", "--mode", "simulation"),
        ("make", "test"), ("make", "nosuch"),
        (".venv/bin/python", "tools/bench_netsim.py", "--hosts", "16"),
        ("netsim", "simulate", "...", "--matrix", "flows.csv"),
        ("flsim", "report", "runs/x"),
        ("netsim", "plot", "--out-dir", "plots/", "--policies", "ecmp"),
    ]
    assert [c.line for c in found][:3] == [4, 5, 7]
    assert [c.synopsis for c in found] == [False] * 5 + [True, False, False]
    assert [c.labelled for c in found] == [True] * 5 + [False, False, True]


@pytest.mark.parametrize("line,problem", [
    ("netsim theorem --trials 5 --json", None),
    ("flsim run --out runs/x --mode simulation --packing flat", None),
    ("flsim --version", None),
    (".venv/bin/flsim report --help", None),
    ("flsim run --out runs/x --bogus", "No such option '--bogus'"),
    ("flsim run --clients", "Option '--clients' requires an argument"),
    ("flsim run --out x --clients two", "'two' is not a valid integer"),
    ("flsim run", "Missing option '--out'"),
    ("netsim simulate --policy wcmp", "'wcmp' is not one of"),
    ("netsim simulat --json", "No such command 'simulat'"),
    (".venv/bin/python tools/bench_netsim.py --hosts 16 --out x.json", None),
    (".venv/bin/python tools/bench_netsim.py --hots 16", "unrecognized arguments: --hots"),
    (".venv/bin/python tools/bench_flsim.py links --quick", None),
    (".venv/bin/python tools/bench_flsim.py speed", "invalid choice: 'speed'"),
    ("python tools/no_such_tool.py", "tools/no_such_tool.py: no such file"),
    ("python -m pytest -x", None),
    ("python -m no_such_module_here", "no module named 'no_such_module_here'"),
    ("make demo", None),
    ("make nosuch", "Makefile has no target nosuch"),
    ("bash tools/gpu_run.sh", None),
    ("bash tools/none.sh", "tools/none.sh: no such file"),
    ("no-such-program-here --x", "program 'no-such-program-here' not found"),
    ("rm -rf runs/x", None),
    ("netsim theorem --trials 5 --json > out.json 2>&1", None),
    ("netsim theorem --trials 5 --jsn 2> err.txt", "No such option '--jsn'"),
    ("netsim simulate ... --json", "a synopsis with placeholders"),
])
def test_check_catches_what_would_not_run(tmp_path: Path, line: str, problem: str | None) -> None:
    [command] = commands(tmp_path, f"```bash\n{line}\n```\n")
    result = checker.check(command, ROOT, SCRIPTS)
    if problem is None:
        assert result is None
    else:
        assert result is not None and problem in result


def test_quoted_arguments_may_span_lines(tmp_path: Path) -> None:
    found = commands(tmp_path, '''```bash
.venv/bin/python -c "
import json
print(json.dumps({'a': [1]}))
" > out.json && flsim profiles --json
echo "it's" || netsim theorem \\
    --trials 2
```
''')
    assert [(c.line, c.argv[0]) for c in found] == [(2, ".venv/bin/python"), (2, "flsim"), (6, "echo"),
                                                    (6, "netsim")]
    assert found[0].argv[1:] == ("-c", "\nimport json\nprint(json.dumps({'a': [1]}))\n")
    assert found[1].argv == ("flsim", "profiles", "--json")
    assert found[3].argv[1:] == ("theorem", "--trials", "2")
    assert not any(c.synopsis for c in found)
    assert all(checker.check(c, ROOT, SCRIPTS) is None for c in found)


def test_main_reports_failures_with_exit_1(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    doc = tmp_path / "doc.md"
    doc.write_text("```bash\nnetsim theorem --json\nnetsim theorem --jsn\n```\n\n```\nnetsim plot ...\n```\n")
    assert checker.main([str(doc)]) == 1
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("ok  ") and out[1].startswith("FAIL") and "--jsn" in out[2]
    assert out[3].startswith("skip") and out[3].endswith("(synopsis)")


def test_the_repository_docs_commands_parse() -> None:
    proc = subprocess.run([sys.executable, str(ROOT / "tools" / "check_docs_commands.py")], cwd=ROOT,
                          capture_output=True, text=True, timeout=240, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "README.md" in proc.stdout and "docs/flsim.md" in proc.stdout
