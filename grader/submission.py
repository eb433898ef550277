"""Reading a learner's submitted notebook, and repairing what nbgrader cannot cope with.

nbgrader restores the source of emptied or edited locked cells from the gradebook by itself
(`OverwriteCells`). The cases it cannot handle are repaired here, before nbgrader sees the
notebook, and every repair is reported in the learner's grade message:

- cell metadata stripped (the notebook was copied cell by cell into a new one, or edited by a
  tool that drops metadata): nbgrader no longer knows which cell is which and crashes. Each
  graded cell is found again by its content — solution cells by the `def`/`class` lines of
  their stub, test cells by their exact source — and gets its metadata back;
- a solution cell deleted: nbgrader inserts a missing test cell after the cell that preceded
  it in the release and crashes when that cell is gone too. An empty placeholder (a comment,
  so it never shadows code the learner wrote elsewhere) takes its place;
- a test cell deleted (a hidden test, or a visible one: read-only, no points): it is put back,
  copied from the release, and nbgrader then restores its full source from the gradebook as
  for any locked cell. (nbgrader's own `add_missing_cells` crashes when the cell before a
  missing one is a read-only cell, as every visible test is.)
- a hand-graded answer cell deleted (grader/manual.py): put back as released, so nbgrader scores
  it 0 ("No response.") and the message says so. An answer cell whose metadata was stripped is
  found only if it is still as released; a written one is then put back empty too, and the
  message tells the instructor to look for the answer by hand.
"""

import copy
import json
import re
from pathlib import Path

import nbformat

_DEF = re.compile(r"^\s*(?:def|class)\s+(\w+)", re.MULTILINE)


class UnreadableNotebook(Exception):
    pass


def read_notebook(path: Path) -> nbformat.NotebookNode:
    """Parse a submitted notebook; raise UnreadableNotebook with a learner-readable reason."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise UnreadableNotebook(f"cannot read {path.name}: {exc.strerror}") from exc
    if not raw.strip():
        raise UnreadableNotebook(f"{path.name} is empty (0 bytes of notebook JSON)")
    try:
        data = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise UnreadableNotebook(f"{path.name} is not UTF-8 text: is it really a .ipynb file?") from exc
    except json.JSONDecodeError as exc:
        raise UnreadableNotebook(
            f"{path.name} is not valid notebook JSON (line {exc.lineno}, column {exc.colno}: {exc.msg}); "
            "it was probably edited by hand or truncated while saving"
        ) from exc
    if not isinstance(data, dict) or "cells" not in data and "worksheets" not in data:
        raise UnreadableNotebook(f"{path.name} is JSON but not a Jupyter notebook (no cells)")
    try:
        nb = nbformat.reads(raw.decode("utf-8"), as_version=4)
        nbformat.validate(nb)
    except Exception as exc:  # nbformat raises several types; all mean "not a notebook we can run"
        raise UnreadableNotebook(f"{path.name} is JSON but not a valid Jupyter notebook: {str(exc)[:200]}") from exc
    return nb


def _grade_id(cell):
    return cell.get("metadata", {}).get("nbgrader", {}).get("grade_id")


def _norm(src: str) -> str:
    return "\n".join(line.rstrip() for line in src.strip().splitlines())


def _matches(release_cell, cell) -> bool:
    if cell.cell_type != release_cell.cell_type:
        return False
    meta = release_cell.metadata["nbgrader"]
    if meta.get("solution"):
        names = _DEF.findall(release_cell.source)
        if names:
            return set(names) <= set(_DEF.findall(cell.source))
    return _norm(cell.source) == _norm(release_cell.source)


def repair(nb, release_nb) -> list[str]:
    """Restore stripped nbgrader metadata and placeholders for deleted solution cells, in place.

    `release_nb` is the student version generated with the same gradebook. Returns notes
    for the grade message (empty if nothing had to be repaired).
    """
    present = {_grade_id(c): i for i, c in enumerate(nb.cells) if _grade_id(c)}
    restored, placeholders, tests, answers = [], [], [], []
    pos = -1  # index in nb.cells of the last graded cell seen, in release order
    for rcell in release_nb.cells:
        gid = _grade_id(rcell)
        if gid is None:
            continue
        if gid in present:
            pos = max(pos, present[gid])
            continue
        for i in range(pos + 1, len(nb.cells)):
            cell = nb.cells[i]
            if "nbgrader" not in cell.metadata and _matches(rcell, cell):
                cell.metadata["nbgrader"] = copy.deepcopy(rcell.metadata["nbgrader"])
                for key in ("deletable", "editable"):
                    if key in rcell.metadata:
                        cell.metadata[key] = rcell.metadata[key]
                present[gid] = pos = i
                restored.append(gid)
                break
        else:
            meta = rcell.metadata["nbgrader"]
            if meta.get("solution") and rcell.cell_type == "markdown":  # a hand-graded answer cell
                stub = copy.deepcopy(rcell)  # as released: nbgrader scores it 0, "No response."
                answers.append(gid)
            elif meta.get("solution"):
                stub = nbformat.v4.new_code_cell(f"# The solution cell '{gid}' was missing from the submission.")
                stub.metadata = copy.deepcopy(rcell.metadata)
                placeholders.append(gid)
            elif meta.get("locked"):
                stub = copy.deepcopy(rcell)
                tests.append(gid)
            else:
                continue
            nb.cells.insert(pos + 1, stub)
            present = {_grade_id(c): i for i, c in enumerate(nb.cells) if _grade_id(c)}
            pos += 1
    notes = []
    if restored:
        notes.append(f"nbgrader metadata restored for {len(restored)} cell(s) ({', '.join(restored[:4])}"
                     f"{', ...' if len(restored) > 4 else ''})")
    if placeholders:
        notes.append(f"solution cell(s) missing: {', '.join(placeholders)}")
    if tests:
        notes.append(f"test cell(s) restored: {', '.join(tests)}")
    if answers:
        notes.append(f"answer cell(s) missing, put back empty (0 points; if the answer was written in another cell, "
                     f"grade it by hand): {', '.join(answers)}")
    return notes
