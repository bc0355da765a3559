"""The fuzzer of the checkpoint readers (fuzzing.py): a short run, and the corpus of cases that once
broke a reader. The long run: ``python -m tests.bytecheckpoint.fuzzing --seconds 600 --seed N``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from tests.bytecheckpoint import fuzzing

CORPUS = sorted((Path(__file__).parent / "fuzz_corpus").glob("*.json"))
ROOT = Path(__file__).resolve().parents[2]
SHORT_RUN_S = float(os.environ.get("BCP_FUZZ_SECONDS", "20"))


@pytest.fixture(scope="module")
def runner():
    with tempfile.TemporaryDirectory(prefix="bcp-corpus-", dir=fuzzing._scratch()) as tmp:
        yield fuzzing.Runner(Path(tmp))


@pytest.mark.parametrize("path", CORPUS, ids=[p.stem for p in CORPUS])
def test_corpus_case(runner, path: Path) -> None:
    case = json.loads(path.read_text())
    problems = runner.run(case)
    assert not problems, f"{path.name} ({case['description'][:200]}):\n" + "\n".join(problems)


def test_corpus_is_not_empty() -> None:
    assert len(CORPUS) >= 20


@pytest.mark.timeout(180)
def test_short_fuzz_run(tmp_path: Path) -> None:
    """Seed 0 by default, so CI is repeatable (BCP_FUZZ_SEED=random draws one, BCP_FUZZ_SEED=N repeats
    one; the long run explores), in a child process under a memory limit; failing cases are saved
    under tmp_path for replay."""
    chosen = os.environ.get("BCP_FUZZ_SEED", "0")
    seed = int.from_bytes(os.urandom(2), "little") if chosen == "random" else int(chosen)
    out = subprocess.run(
        [sys.executable, "-m", "tests.bytecheckpoint.fuzzing", "--seconds", str(SHORT_RUN_S), "--seed", str(seed),
         "--max-memory-gib", "4", "--save", str(tmp_path / "crashers")],
        cwd=ROOT, capture_output=True, text=True, timeout=170, check=False,
    )
    print(out.stdout[-3000:])
    assert out.returncode == 0, f"seed {seed}:\n{out.stdout[-6000:]}\n{out.stderr[-3000:]}"
    assert " cases in " in out.stdout
