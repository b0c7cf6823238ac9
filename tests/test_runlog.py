"""The JSONL run log: what is written reads back in any JSON layout; old key names read as the new
ones; a cut-off or truncated log stays readable; a repeated step is found."""

import gc
import json

import pytest

from rqvae.trainer import runlog


def _record(step, kind="train", **extra):
    return {"kind": kind, "step": step, "time": step / 10, "total": 1.0 / step, **extra}


def _train(step, total):
    return {"kind": "train", "step": step, "time": step / 10, "total": total, "recon": total / 2,
            "commit": 0.125, "codebook": 0.25, "wasserstein": 0.0, "batch_used": [3, 4],
            "batch_perplexity": [2.5, 3.5], "window_dead": [1, 0],
            "sinkhorn_marginal_error": [0.01, 0.02]}


def _eval(step):
    return {"kind": "eval", "step": step, "time": step / 9, "heldout_recon": 0.5,
            "heldout_psnr": 21.5, "train_used": [4, 4], "train_dead": [0, 0],
            "train_perplexity": [3.0, 3.5], "heldout_used": [4, 3],
            "heldout_perplexity": [2.75, 3.25]}


def _write(run_dir, records):
    with runlog.RunLog(run_dir) as log:
        for record in records:
            log.write(record)


def test_records_round_trip_one_line_each(tmp_path):
    records = [_train(10, 0.5), _eval(15), _record(20, kind="resume", changed={"steps": [20, 40]}),
               _record(40, kind="end", status="completed", reason="")]
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
        # blanks, a list, a string, an object without a step
        f.write("\n  \n[1, 2]\n\"text\"\n{\"kind\": \"train\"}\n")
        f.write(json.dumps(_record(30))[:25])  # killed mid-line
    assert [r["step"] for r in runlog.read(tmp_path)] == [10, 20]


@pytest.mark.parametrize("dump", [
    lambda r: json.dumps(r),  # Python's default separators: ", " and ": "
    lambda r: json.dumps(dict(reversed(list(r.items()))), separators=(",", ":")),  # key order
    lambda r: json.dumps(r, separators=(" , ", " : ")),  # spaces anywhere JSON allows them
])
def test_any_json_layout_reads_as_runlogs_own(tmp_path, dump):
    records = [_train(10, 0.5), _eval(10), _train(20, 0.25)]
    (tmp_path / runlog.METRICS_FILE).write_text("".join(dump(r) + "\n" for r in records))
    assert runlog.read(tmp_path) == records


def test_non_finite_values_read_back_as_pythons_json_wrote_them(tmp_path):
    _write(tmp_path, [_train(10, float("nan")), _train(20, float("inf")), _train(30, 0.5)])
    totals = [r["total"] for r in runlog.read(tmp_path)]
    assert totals[0] != totals[0] and totals[1:] == [float("inf"), 0.5]


def test_old_key_names_read_as_the_new_ones(tmp_path):
    old_train = {"kind": "train", "step": 10, "time": 1.0, "total": 0.5, "used": [3, 4],
                 "perplexity": [2.5, 3.5], "dead": [1, 0]}
    old_eval = {"kind": "eval", "step": 10, "time": 1.5, "heldout_recon": 0.5, "used": [4, 4],
                "dead": [0, 0], "perplexity": [3.0, 3.5], "heldout_perplexity": [2.0, 2.5]}
    _write(tmp_path, [old_train, old_eval, _train(20, 0.25)])  # resumed by a newer trainer
    train, evaluation, new = runlog.read(tmp_path)
    assert train == {"kind": "train", "step": 10, "time": 1.0, "total": 0.5,
                     "batch_used": [3, 4], "batch_perplexity": [2.5, 3.5], "window_dead": [1, 0]}
    assert evaluation == {"kind": "eval", "step": 10, "time": 1.5, "heldout_recon": 0.5,
                          "train_used": [4, 4], "train_dead": [0, 0],
                          "train_perplexity": [3.0, 3.5], "heldout_perplexity": [2.0, 2.5]}
    assert new == _train(20, 0.25)


def test_read_log_holds_the_records_read_gives_with_the_train_columns(tmp_path):
    old_train = {"kind": "train", "step": 15, "time": 1.5, "total": 0.4, "recon": 0.2,
                 "commit": 0.125, "codebook": 0.25, "wasserstein": 0.0, "used": [3, 4]}
    without_terms = {"kind": "train", "step": 40, "time": 4.0, "total": 0.2}
    records = [_train(10, 0.5), _eval(10), old_train, _train(20, float("nan")),
               _record(20, kind="resume", changed={"steps": [20, 40]}), _train(30, 0.25),
               without_terms, _record(40, kind="end", status="completed", reason="")]
    text = "".join(json.dumps(r) + "\n" for r in records)  # with NaN, as Python's json writes
    cut_off = json.dumps(_train(50, 1.0))[:30]
    (tmp_path / runlog.METRICS_FILE).write_text("\n[1, 2]\n" + text + cut_off)
    everything = runlog.read(tmp_path)
    train = [r for r in everything if r["kind"] == "train"]
    log = runlog.read_log(tmp_path)
    assert list(log.train) == train and len(log.train) == 5 and log.train[-1] == train[-1]
    assert log.train[1]["batch_used"] == [3, 4] and log.train[1:3] == train[1:3]
    assert log.others == [r for r in everything if r["kind"] != "train"]
    assert log.last == everything[-1] == records[-1]
    columns = {key: [r.get(key) for r in train] for key in runlog.SERIES_KEYS}
    assert json.dumps(log.series) == json.dumps(columns)  # NaN equals NaN as text
    assert log.series["step"] == (10, 15, 20, 30, 40) and log.series["recon"][-1] is None


def test_read_log_of_a_log_without_records_is_empty(tmp_path):
    (tmp_path / runlog.METRICS_FILE).write_text('\n{"kind": "train", "st')
    log = runlog.read_log(tmp_path)
    assert log.series == {key: () for key in runlog.SERIES_KEYS}
    assert len(log.train) == 0 and log.others == [] and log.last is None


def test_read_leaves_the_garbage_collector_as_it_found_it(tmp_path):
    _write(tmp_path, [_train(10, 0.5)])
    runlog.read(tmp_path)
    assert gc.isenabled()
    gc.disable()
    try:
        runlog.read(tmp_path)
        assert not gc.isenabled()
    finally:
        gc.enable()


def test_repeated_steps_are_the_steps_that_occur_more_than_once():
    assert runlog.repeated_steps([10, 20, 30, 20, 40, 30, 30, 5]) == [20, 30]
    assert runlog.repeated_steps([10, 20, 30]) == [] and runlog.repeated_steps([]) == []


def test_truncate_after_drops_later_records_and_keeps_earlier_lines_verbatim(tmp_path):
    records = [_record(10), _record(15, kind="eval", heldout_recon=0.5), _record(20),
               _record(30), _record(30, kind="eval", heldout_recon=0.4)]
    _write(tmp_path, records)
    path = tmp_path / runlog.METRICS_FILE
    original_lines = path.read_bytes().splitlines(keepends=True)

    runlog.truncate_after(tmp_path, 20)

    assert path.read_bytes() == b"".join(original_lines[:3])
    assert runlog.read(tmp_path) == records[:3]
    assert sorted(p.name for p in tmp_path.iterdir()) == [runlog.METRICS_FILE]  # no temp file


def test_truncate_after_keeps_old_names_and_other_layouts_as_written(tmp_path):
    lines = ['{"kind": "train", "step": 10, "used": [1, 2]}\n', '{"step":20,"kind":"train"}\n',
             '{"kind": "train", "step": 30}\n']
    (tmp_path / runlog.METRICS_FILE).write_text("".join(lines))
    runlog.truncate_after(tmp_path, 20)
    assert (tmp_path / runlog.METRICS_FILE).read_text() == "".join(lines[:2])


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


@pytest.mark.parametrize("value, finite", [(0.5, True), (3, True), (float("nan"), False),
                                           (float("-inf"), False), (True, False), (None, False),
                                           ("1.0", False)])
def test_is_finite_takes_numbers_only(value, finite):
    assert runlog.is_finite(value) is finite
