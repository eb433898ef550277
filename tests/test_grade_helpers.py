"""The dispatcher's small pieces (grader/grade.py), without grading anything."""

from grader.grade import longest_first, run_summary


def spec(student: str, aid: str) -> dict:
    return {"student_id": student, "assignment": aid}


def test_the_longest_modules_start_first_and_equals_keep_the_input_order():
    class_batch = [spec(s, aid) for s in ("ada", "bo") for aid in
                   ("01_tensors_autograd", "06_encoder_mlm", "09_mini_gpt_capstone", "10_finetune_distilbert")]
    order = [(s["assignment"][:2], s["student_id"]) for s in longest_first(class_batch)]
    assert order == [("09", "ada"), ("09", "bo"), ("06", "ada"), ("10", "ada"), ("06", "bo"), ("10", "bo"),
                     ("01", "ada"), ("01", "bo")], "module 09 (240 s budget) first, then the 150 s ones, then 01"


def test_the_run_summary_splits_the_run_into_its_phases():
    line = run_summary(100.0, {"workers and template": 106.5, "grading": 186.5, "stopping the workers": 188.5,
                               "merging": 189.6}, 28, 2)
    assert line == ("# run: 28 notebook(s) graded on 2 worker(s) in 89.6 s: workers and template 6.5 s, "
                    "grading 80.0 s, stopping the workers 2.0 s, merging 1.1 s\n")
    assert "on the cluster" in run_summary(0.0, {"grading": 1.0}, 1, None)
