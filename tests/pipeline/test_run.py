"""The main job's summary: the dev-evaluation share counts only the evaluations of this run."""

import json

from pipeline import paths, run


def _append(layout: paths.RunLayout, *records: dict) -> None:
    with open(layout.eval_history, "a", encoding="utf-8") as f:
        for record in records:
            f.write(json.dumps(record) + "\n")


def test_a_resumed_run_counts_only_its_own_dev_evaluations(tmp_path):
    layout = paths.RunLayout(str(tmp_path))
    assert run._eval_records(layout) == []
    _append(layout, {"split": "dev", "seconds": 25.0}, {"split": "test", "seconds": 20.0})
    earlier = len(run._eval_records(layout))
    _append(
        layout,
        {"split": "dev", "seconds": 13.5},
        {"split": "dev", "seconds": 4.5},
        {"split": "test", "seconds": 13.0},
    )
    assert run._dev_evaluation_seconds(run._eval_records(layout)[earlier:]) == 18.0
    assert run._dev_evaluation_seconds(run._eval_records(layout)) == 43.0
