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
    earlier = run._eval_records(layout)
    _append(
        layout,
        {"split": "dev", "seconds": 13.5},
        {"split": "dev", "seconds": 4.5},
        {"split": "test", "seconds": 13.0},
    )
    assert run._dev_evaluation_seconds(run._this_runs(run._eval_records(layout), earlier)) == 18.0
    assert run._dev_evaluation_seconds(run._eval_records(layout)) == 43.0


def test_a_restarted_run_counts_its_evaluations_after_the_history_was_truncated(tmp_path):
    """`nmt-run --fresh` over an earlier run: the trainer's --restart truncates the history to
    step 0, then appends fewer records than the earlier run held (the summary read 0 s)."""
    layout = paths.RunLayout(str(tmp_path))
    _append(layout, *({"step": s, "split": "dev", "seconds": 3.0} for s in (500, 1000, 1500)))
    earlier = run._eval_records(layout)
    open(layout.eval_history, "w").close()  # history.truncate to step 0
    _append(layout, {"step": 1000, "split": "dev", "seconds": 4.0})
    _append(layout, {"step": 2000, "split": "dev", "seconds": 3.5})
    assert run._dev_evaluation_seconds(run._this_runs(run._eval_records(layout), earlier)) == 7.5
