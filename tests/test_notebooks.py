"""Every solution notebook executes top to bottom, on CPU, within its module's time budget
(grader/README.md, "Time rule"). The seconds are printed: `pytest -s -k executes`."""

import time

import nbformat
import pytest
from nbclient import NotebookClient

from grader.assignments import assignment_ids, budget_s, solution_notebook
from grader.nbgrader_cli import nbgrader_env

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("aid", assignment_ids())
def test_solution_notebook_executes_within_budget(aid, monkeypatch, capsys):
    for key, value in nbgrader_env().items():  # same kernel environment as grading: CPU, grader importable
        monkeypatch.setenv(key, value)
    path = solution_notebook(aid)
    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(nb, timeout=budget_s(aid) * 2, kernel_name="python3",
                            resources={"metadata": {"path": str(path.parent)}})
    t0 = time.perf_counter()
    client.execute()
    seconds = time.perf_counter() - t0
    with capsys.disabled():
        print(f"\n{aid}: executed in {seconds:.1f} s (budget {budget_s(aid)} s)")
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
    assert not errors
    assert seconds <= budget_s(aid), f"{aid} took {seconds:.1f} s, over its {budget_s(aid)} s budget"
