"""nbgrader configuration for Transformer Deep Dive.

Loaded by every nbgrader command that `grader/build.py` and `grader/grade.py` run (they put
this folder on JUPYTER_CONFIG_PATH). An instructor can use the nbgrader CLI directly with
    JUPYTER_CONFIG_PATH=grader nbgrader <command> ...
from the repository root. `grader.grade` overrides the course root, gradebook and timeouts
on the command line for each grading run.
"""

c = get_config()  # noqa: F821 (provided by traitlets when nbgrader loads this file)

c.CourseDirectory.course_id = "transformer-deep-dive"
c.CourseDirectory.source_directory = "solutions"  # instructor notebooks
c.CourseDirectory.release_directory = "course"  # student notebooks (committed)
c.CourseDirectory.ignore = [".ipynb_checkpoints", "*.pyc", "__pycache__", "feedback", ".DS_Store"]

c.ClearSolutions.code_stub = {"python": "# YOUR CODE HERE\nraise NotImplementedError()"}

# A learner who deletes or empties a test cell still gets it graded: grader/submission.py puts a
# deleted one back from the release, and OverwriteCells restores every locked cell's source from
# the gradebook. add_missing_cells stays on as a second line of defence.
c.OverwriteCells.add_missing_cells = True
c.Autograde.create_student = True

# Execution limits; grader.grade sets the per-cell timeout from the module's time budget.
c.Execute.timeout = 120
c.Execute.interrupt_on_timeout = True
c.Execute.execute_retries = 0
# Every output has arrived when the last cell replies: stop the kernel at once instead of waiting
# for a graceful exit (about 1.7 s for a kernel that imported torch, per notebook graded).
c.Execute.shutdown_kernel = "immediate"

# Warnings on stderr must not fail a test cell; huge prints are capped in bytes.
c.Autograde.autograde_preprocessors = [
    "nbgrader.preprocessors.Execute",
    "grader.preprocessors.StderrAsText",
    "grader.preprocessors.CapOutputBytes",
    "grader.preprocessors.RecordTiming",
    "nbconvert.preprocessors.ClearMetadataPreprocessor",
    "nbgrader.preprocessors.LimitOutput",
    "nbgrader.preprocessors.SaveAutoGrades",
    "nbgrader.preprocessors.AssignLatePenalties",
    "nbgrader.preprocessors.CheckCellMetadata",
]
c.CapOutputBytes.max_bytes = 500_000

# A feedback page goes to the learner: the rubric cells that grading puts under each hand-graded
# answer cell of the executed notebook (for the grader, grader/manual.py) stay out of it.
c.GenerateFeedback.preprocessors = [
    "nbgrader.preprocessors.GetGrades",
    "grader.preprocessors.RemoveRubrics",
    "grader.preprocessors.MarkWaitingAnswers",
    "nbconvert.preprocessors.CSSHTMLHeaderPreprocessor",
]
