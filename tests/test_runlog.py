import json

from rqvae import runlog


def test_write_then_read_round_trips(tmp_path):
    records = [{"kind": "train", "step": s, "total": s / 3} for s in (1, 2, 3)]
    with runlog.RunLog(tmp_path) as log:
        for record in records:
            log.write(record)
    assert runlog.read(tmp_path) == records


def test_truncate_after_keeps_earlier_records_and_drops_later(tmp_path):
    with runlog.RunLog(tmp_path) as log:
        for step in (10, 20, 30, 40):
            log.write({"kind": "train", "step": step})
        log.write({"kind": "eval", "step": 20})
    with open(tmp_path / runlog.METRICS_FILE, "a") as f:
        f.write('{"kind": "train", "st')  # cut off by a kill
    runlog.truncate_after(tmp_path, 20)
    lines = (tmp_path / runlog.METRICS_FILE).read_text().splitlines()
    assert [json.loads(line)["step"] for line in lines] == [10, 20, 20]
    assert not (tmp_path / "metrics.jsonl.tmp").exists()
