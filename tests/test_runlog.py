"""The JSONL run log: what is written reads back; a cut-off or truncated log stays readable."""

import json

from rqvae import runlog


def _record(step, kind="train", **extra):
    return {"kind": kind, "step": step, "time": step / 10, "total": 1.0 / step, **extra}


def _write(run_dir, records):
    with runlog.RunLog(run_dir) as log:
        for record in records:
            log.write(record)


def test_records_round_trip_one_line_each(tmp_path):
    records = [_record(10, used=[3, 4]), _record(15, kind="eval", heldout_recon=0.25),
               _record(20, perplexity=[1.5, 2.5])]
    _write(tmp_path, records)
    lines = (tmp_path / runlog.METRICS_FILE).read_text().splitlines()
    assert [json.loads(line) for line in lines] == records
    assert runlog.read(tmp_path) == records


def test_a_reader_sees_every_record_while_the_writer_is_open(tmp_path):
    with runlog.RunLog(tmp_path) as log:
        log.write(_record(10))
        assert runlog.read(tmp_path) == [_record(10)]
        log.write(_record(20))
        assert [r["step"] for r in runlog.read(tmp_path)] == [10, 20]


def test_a_second_log_appends(tmp_path):
    _write(tmp_path, [_record(10)])
    _write(tmp_path, [_record(20)])
    assert [r["step"] for r in runlog.read(tmp_path)] == [10, 20]


def test_read_skips_a_cut_off_last_line_and_lines_that_are_no_records(tmp_path):
    _write(tmp_path, [_record(10), _record(20)])
    with open(tmp_path / runlog.METRICS_FILE, "a", encoding="utf-8") as f:
        f.write("\n[1, 2]\n\"text\"\n{\"kind\": \"train\"}\n")  # blank, a list, a string, no step
        f.write(json.dumps(_record(30))[:25])  # killed mid-line
    assert [r["step"] for r in runlog.read(tmp_path)] == [10, 20]


def test_truncate_after_drops_later_records_and_keeps_earlier_lines_verbatim(tmp_path):
    records = [_record(10), _record(15, kind="eval", heldout_recon=0.5), _record(20),
               _record(30), _record(30, kind="eval", heldout_recon=0.4)]
    _write(tmp_path, records)
    path = tmp_path / runlog.METRICS_FILE
    original_lines = path.read_bytes().splitlines(keepends=True)

    runlog.truncate_after(tmp_path, 20)

    assert path.read_bytes() == b"".join(original_lines[:3])
    assert [json.loads(line) for line in path.read_text().splitlines()] == records[:3]
    assert runlog.read(tmp_path) == records[:3]
    assert sorted(p.name for p in tmp_path.iterdir()) == [runlog.METRICS_FILE]  # no temp file


def test_truncate_after_drops_a_cut_off_line_and_the_log_then_appends_cleanly(tmp_path):
    _write(tmp_path, [_record(10), _record(20)])
    with open(tmp_path / runlog.METRICS_FILE, "a", encoding="utf-8") as f:
        f.write(json.dumps(_record(30))[:20])
    runlog.truncate_after(tmp_path, 20)
    assert (tmp_path / runlog.METRICS_FILE).read_text().endswith("}\n")
    _write(tmp_path, [_record(30)])
    assert [r["step"] for r in runlog.read(tmp_path)] == [10, 20, 30]


def test_truncate_after_keeps_everything_up_to_the_last_step_and_ignores_a_missing_log(tmp_path):
    _write(tmp_path, [_record(10), _record(20)])
    before = (tmp_path / runlog.METRICS_FILE).read_bytes()
    runlog.truncate_after(tmp_path, 20)
    assert (tmp_path / runlog.METRICS_FILE).read_bytes() == before
    empty = tmp_path / "fresh"
    empty.mkdir()
    runlog.truncate_after(empty, 5)
    assert list(empty.iterdir()) == []
