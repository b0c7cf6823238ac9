"""The JSONL run log: what is written reads back; a cut-off or truncated log stays readable."""

import json
import math

import pytest

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


# -- scan: long logs for reports --------------------------------------------------------------


def _train(step, total, **extra):
    losses = {"total": total, "recon": total / 2, "commit": 0.125, "codebook": 0.25,
              "wasserstein": 0.0}
    return {"kind": "train", "step": step, "time": step / 10, **losses, "used": [3, 4],
            "perplexity": [2.5, 3.5], "dead": [1, 0], **extra}


def _eval(step):
    return {"kind": "eval", "step": step, "time": step / 9, "heldout_recon": 0.5, "used": [4, 4],
            "perplexity": [3.0, 3.5], "dead": [0, 0]}


def _scanned(run_dir):
    """What scan gives, as read would: (train records, eval records, per-term first-min index)."""
    train, evals = runlog.scan(run_dir)
    best = {t: train.first_min(t) for t in runlog.LOSS_TERMS}
    return list(train), evals, best


def _expected(run_dir):
    records = runlog.read(run_dir)
    train = [r for r in records if r["kind"] == "train"]
    best = {}
    for term in runlog.LOSS_TERMS:
        finite = [i for i, r in enumerate(train)
                  if isinstance(r.get(term), int | float) and math.isfinite(r[term])]
        best[term] = min(finite, key=lambda i: train[i][term]) if finite else None
    return train, [r for r in records if r["kind"] == "eval"], best


def test_scan_of_a_log_written_by_runlog_parses_only_its_eval_lines(tmp_path, monkeypatch):
    records = [_train(s, 1 / s) for s in range(1, 301)]
    records[150:150] = [_eval(150)]
    for tied in records[120], records[200]:  # a tie: the first one is the best
        tied.update(total=0.001, recon=0.0005)
    _write(tmp_path, records)
    parsed, parse = [], runlog._parse
    monkeypatch.setattr(runlog, "_parse", lambda line: parsed.append(line) or parse(line))
    train, evals = runlog.scan(tmp_path)
    assert len(parsed) == 2  # the eval line and the (empty) unterminated tail, no train line
    assert train.steps == list(range(1, 301)) and evals == [_eval(150)]
    assert train.first_min("total") == 120 and train.value("total", 120) == 0.001
    assert train.first_min("recon") == 120
    assert train.first_min("commit") == 0  # constant: the first record
    assert train.records([299, 0, -1]) == [records[-1], records[0], records[-1]]
    assert not train.any_nonzero("wasserstein")


@pytest.mark.parametrize("case", ["plain", "numbers", "hand-written", "cut off", "no newline",
                                  "repeated step"])
def test_scan_gives_what_read_gives(tmp_path, monkeypatch, case):
    records = [_train(s, 0.5 + 0.25 * (s % 3)) for s in range(10, 110, 10)]
    if case == "repeated step":  # e.g. logs joined by hand: the best is the second step 30
        records[6].update(step=30, total=0.125)
    if case == "numbers":  # outside d.ddd: exponents, >= 10, negative, NaN, infinity, an int
        totals = [3e-05, 12.5, -0.5, float("nan"), float("inf"), 2, 1e-07]
        for record, total in zip(records, totals):
            record["total"] = total
    records[-1]["wasserstein"] = 1e-05 if case == "numbers" else 0.5
    records.insert(4, _eval(40))
    _write(tmp_path, records)
    path = tmp_path / runlog.METRICS_FILE
    if case == "hand-written":  # spaces after separators, a blank line, a line that is no record
        path.write_text("\n".join(json.dumps(r) for r in records[:5]) + "\n\n[1]\n"
                        + "".join(json.dumps(r) + "\n" for r in records[5:]))
    if case == "cut off":
        with open(path, "a", encoding="utf-8") as f:
            f.write(json.dumps(_train(110, 0.01))[:70])
    if case == "no newline":
        path.write_bytes(path.read_bytes().rstrip(b"\n"))
    assert _scanned(tmp_path) == _expected(tmp_path)
    parsed, parse = [], runlog._parse
    monkeypatch.setattr(runlog, "_parse", lambda line: parsed.append(line) or parse(line))
    train, _ = runlog.scan(tmp_path)
    fast = case in ("plain", "numbers", "cut off")  # RunLog's layout: eval line and tail parsed
    assert len(parsed) == 2 if fast else len(parsed) > 10
    assert train.any_nonzero("wasserstein")  # the last record's; test above: all zero
    if case == "numbers":
        assert train.first_min("total") == 2 and train.value("total", 2) == -0.5
        assert train.value("total", 5) == 2 and isinstance(train.value("total", 5), int)


def test_scan_of_a_log_without_train_records_is_empty(tmp_path):
    _write(tmp_path, [_eval(5)])
    train, evals = runlog.scan(tmp_path)
    assert len(train) == 0 and list(train) == [] and evals == [_eval(5)]
    assert train.first_min("total") is None
    with pytest.raises(IndexError):
        train[0]


def test_a_line_in_the_layout_but_no_json_keeps_its_step_and_loss_terms(tmp_path):
    _write(tmp_path, [_train(10, 0.5)])
    with open(tmp_path / runlog.METRICS_FILE, "a", encoding="utf-8") as f:
        f.write(json.dumps(_train(20, 0.25), separators=(",", ":"))[:-12] + "}\n")
    train, _ = runlog.scan(tmp_path)
    assert train.steps == [10, 20]
    assert train[1] == {"kind": "train", "step": 20, "total": 0.25, "recon": 0.125,
                        "commit": 0.125, "codebook": 0.25, "wasserstein": 0.0}


@pytest.mark.parametrize("layout", ["plain", "numbers"])
def test_scan_a_chunk_at_a_time_gives_what_read_gives(tmp_path, monkeypatch, layout):
    """Chunks of a line or two: the lowest values and their first records across chunks, evals in
    between, and (numbers) a chunk in the middle with losses outside d.ddd, after which the rest
    of the log is matched as numbers."""
    train_records = [_train(s, 0.5 + 0.25 * (s % 7) / 7) for s in range(10, 410, 10)]
    train_records[5]["total"] = train_records[31]["total"] = 0.125  # a tie, chunks apart
    train_records[12]["recon"] = 0.0625
    train_records[33]["wasserstein"] = 0.25
    if layout == "numbers":
        train_records[20]["commit"] = 1e-05
        train_records[25]["total"] = float("nan")
        train_records[27]["recon"] = 12.5
    records = [*train_records]
    for step in (100, 250, 400):
        records.insert([r["step"] for r in records].index(step) + 1, _eval(step))
    _write(tmp_path, records)
    monkeypatch.setattr(runlog, "_CHUNK", 300)  # a train line is about 230 bytes
    assert _scanned(tmp_path) == _expected(tmp_path)
    parsed, parse = [], runlog._parse
    monkeypatch.setattr(runlog, "_parse", lambda line: parsed.append(line) or parse(line))
    train, evals = runlog.scan(tmp_path)
    assert len(parsed) == 4  # the 3 eval lines and the (empty) unterminated tail: no fallback
    assert evals == [_eval(100), _eval(250), _eval(400)]
    assert train.first_min("total") == 5 and train.first_min("recon") == 12
    assert train.first_min("commit") == (20 if layout == "numbers" else 0)
    assert train.any_nonzero("wasserstein")
    assert train.value("recon", 27) == train_records[27]["recon"]
    assert train.value("codebook", -1) == 0.25
    assert train.records([39, 0, 20, -1]) == [train_records[i] for i in (39, 0, 20, 39)]


def test_a_term_that_is_zero_in_every_chunk_is_zero(tmp_path, monkeypatch):
    monkeypatch.setattr(runlog, "_CHUNK", 300)
    _write(tmp_path, [_train(s, 0.5) for s in range(1, 50)])
    train, _ = runlog.scan(tmp_path)
    assert not train.any_nonzero("wasserstein") and train.any_nonzero("commit")
