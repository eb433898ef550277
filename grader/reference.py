"""The reference implementation of a module, read from its instructor notebook.

The instructor notebook is the single source of truth: instead of keeping a second copy of
the solutions in Python files, the tests execute the notebook's setup cells (cell tag
`setup`) and its solution cells (nbgrader `solution: true`), in order, into a fresh namespace.
Solution cells therefore only define things (functions, classes, small constants); the
training runs and plots live in ordinary cells.
"""

import nbformat

from grader.assignments import solution_notebook


def is_solution_cell(cell) -> bool:
    return cell.cell_type == "code" and cell.metadata.get("nbgrader", {}).get("solution", False)


def is_setup_cell(cell) -> bool:
    return cell.cell_type == "code" and "setup" in cell.metadata.get("tags", [])


def reference_namespace(assignment_id: str) -> dict:
    """Execute the setup and solution cells of the instructor notebook; return their globals.

    Each call builds a new namespace, so replacing one name in it (a mutant) also changes what
    every other reference function that calls that name sees.
    """
    nb = nbformat.read(solution_notebook(assignment_id), as_version=4)
    ns: dict = {"__name__": f"reference_{assignment_id}"}
    for cell in nb.cells:
        if is_setup_cell(cell) or is_solution_cell(cell):
            grade_id = cell.metadata.get("nbgrader", {}).get("grade_id", "setup")
            exec(compile(cell.source, f"<{assignment_id}:{grade_id}>", "exec"), ns)
    return ns
