import csv
import re

import pytest

from flsim.errors import RecordError
from flsim.phases import PHASES, assemble
from flsim.report import render
from flsim.results import read_phases, write_results
from tests.flsim.test_phases import synthetic_round


def _timelines():
    return assemble(synthetic_round(rnd=1) + synthetic_round(rnd=2, t0=100.0))


def test_parquet_tables_equal_the_csv_tables(tmp_path):
    pq = pytest.importorskip("pyarrow.parquet", reason="pyarrow is in the 'dev' and 'parquet' extras")
    timelines = _timelines()
    write_results(tmp_path, timelines, [], {"profile": {"name": "t"}}, parquet=True)
    for name in ("phases", "rounds"):
        table = pq.read_table(tmp_path / f"{name}.parquet").to_pylist()
        with open(tmp_path / f"{name}.csv", newline="") as f:
            rows = list(csv.DictReader(f))
        assert len(table) == len(rows) > 0
        for got, want in zip(table, rows, strict=True):
            assert list(got) == list(want)
            for k, v in got.items():
                if isinstance(v, float):
                    assert v == pytest.approx(float(want[k]), abs=1e-6), (name, k)
                else:
                    assert str(v) == want[k], (name, k)
    rounds = pq.read_table(tmp_path / "rounds.parquet").to_pylist()
    for row in rounds:  # the phases of a client's round add up to the round
        assert sum(row[p] for p in PHASES) == pytest.approx(row["round_seconds"], abs=1e-9)


def test_without_parquet_only_csv_is_written(tmp_path):
    write_results(tmp_path, _timelines(), [], {})
    assert not list(tmp_path.glob("*.parquet"))
    assert len(read_phases(tmp_path)) == sum(len(tl.records) for tl in _timelines())


def test_html_report_holds_the_figures_and_the_numbers(tmp_path):
    timelines = _timelines()
    write_results(tmp_path / "a", timelines, [], {"profile": {"name": "alpha"}})
    write_results(tmp_path / "b", timelines[:1], [], {"profile": {"name": "beta"}})
    written = render([tmp_path / "a", tmp_path / "b"], tmp_path / "rep")
    page = (tmp_path / "rep" / "report.html").read_text()
    assert tmp_path / "rep" / "report.html" in written
    assert page.count("data:image/png;base64,") == 4
    # the round table's total is the mean round time over clients, as the recorded phases say
    for tl in timelines:
        mean_total = sum(tl.mean_phases().values())
        assert f"<th>round {tl.round}</th>" in page
        assert f"<b>{mean_total:.3f}</b>" in page
    assert re.search(r"<th>alpha</th>.*<th>beta</th>", page, re.DOTALL)


def test_report_of_a_directory_that_is_not_a_run_names_it(tmp_path):
    with pytest.raises(RecordError, match="phases.csv not found"):
        render([tmp_path], tmp_path)
