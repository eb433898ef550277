"""The reference implementation of a module, read from its instructor notebook.

The instructor notebook is the single source of truth: instead of keeping a second copy of
the solutions in Python files, the tests execute the notebook's setup cells (cell tag
`setup`) and its solution cells (nbgrader `solution: true`), in order, into a fresh namespace.
Solution cells therefore only define things (functions, classes, small constants); the
training runs and plots live in ordinary cells.
"""

import linecache

import nbformat

from grader.assignments import solution_notebook


def is_solution_cell(cell) -> bool:
    return cell.cell_type == "code" and cell.metadata.get("nbgrader", {}).get("solution", False)


def is_setup_cell(cell) -> bool:
    return cell.cell_type == "code" and "setup" in cell.metadata.get("tags", [])


def is_carried_cell(cell) -> bool:
    """A solution cell without points whose grade id ends in `_carried`: the learner's code from an earlier module,
    carried into this one (module 09's `gpt07_carried`: module 07's GPT and generate). No visible or hidden cell
    follows it; its solution region is the earlier module's reference code (grader/README.md)."""
    return is_solution_cell(cell) and cell.metadata["nbgrader"].get("grade_id", "").endswith("_carried")


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
            filename = f"<{assignment_id}:{grade_id}:{len(linecache.cache)}>"
            # Kept in linecache, as a kernel keeps its cells: tracebacks show the lines, and
            # deepdive.capstone.source_of can write the definitions out as a program.
            linecache.cache[filename] = (len(cell.source), None, cell.source.splitlines(True), filename)
            exec(compile(cell.source, filename, "exec"), ns)
    return ns


def solution_source(assignment_id: str, grade_id: str) -> str:
    """The source of the instructor notebook's cell `grade_id` (e.g. "train_solution")."""
    nb = nbformat.read(solution_notebook(assignment_id), as_version=4)
    for cell in nb.cells:
        if cell.metadata.get("nbgrader", {}).get("grade_id") == grade_id:
            return cell.source
    raise KeyError(f"{assignment_id} has no cell {grade_id!r}")
