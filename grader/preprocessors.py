"""nbgrader preprocessors the course adds to autograding (see grader/nbgrader_config.py)."""

import json
import os
from datetime import datetime
from pathlib import Path

import nbformat
from nbgrader.preprocessors import NbGraderPreprocessor
from traitlets import Integer


class StderrAsText(NbGraderPreprocessor):
    """Keep stderr text, but stop it from failing a test cell.

    nbgrader scores a test cell that wrote anything to stderr as failed. torch and transformers
    print warnings there (deprecations, thread settings, ...), which would cost a correct
    answer its points. Only an exception (an `error` output) should fail a test, so stderr is
    relabelled as stdout with a visible prefix: nothing is lost from the feedback.
    """

    def preprocess_cell(self, cell, resources, cell_index):
        if cell.cell_type == "code":
            for output in cell.outputs:
                if output.output_type == "stream" and output.name == "stderr":
                    output.name = "stdout"
                    output.text = "".join(f"[stderr] {line}" for line in output.text.splitlines(keepends=True))
        return cell, resources


class CapOutputBytes(NbGraderPreprocessor):
    """Cap the bytes each cell keeps in its outputs (a 50 MB print must not make a 50 MB notebook and
    feedback page). The cap is far above what a course cell prints (its largest reference cells, a few
    plots, hold about 100 KB), so plots and numbers reach the feedback page. Past it, text is cut and a
    rich output (an image, HTML) is replaced by a line that says what was dropped."""

    max_bytes = Integer(500_000, help="Bytes of output kept per cell").tag(config=True)

    def preprocess_cell(self, cell, resources, cell_index):
        if cell.cell_type != "code":
            return cell, resources
        budget = self.max_bytes
        kept = []
        for output in cell.outputs:
            size = _size(output)
            if size <= budget:
                kept.append(output)
                budget -= size
                continue
            note = (f"this output is {size:,} bytes and the grader keeps {self.max_bytes:,} bytes of output per "
                    "cell")
            if output.output_type == "stream":
                output.text = output.text[: max(budget, 0)] + f"\n... [output truncated by the grader: {note}]\n"
                kept.append(output)
            elif output.output_type == "error":
                output.traceback = output.traceback[-3:]
                kept.append(output)
            else:
                kinds = ", ".join(sorted(output.get("data", {}))) or output.output_type
                kept.append(nbformat.v4.new_output("stream", name="stdout",
                                                   text=f"... [{kinds} output dropped by the grader: {note}]\n"))
            budget = 0
        cell.outputs = kept
        return cell, resources


def _size(output) -> int:
    if output.output_type == "stream":
        return len(output.text.encode("utf-8", "replace"))
    if output.output_type == "error":
        return sum(len(line) for line in output.traceback)
    return sum(len(str(v)) for v in output.get("data", {}).values())


class RecordTiming(NbGraderPreprocessor):
    """Write how long the notebook's cells ran (seconds from the first cell's start to the last
    cell's reply, from nbclient's timing metadata) to $DEEPDIVE_TIMING_FILE, before
    ClearMetadataPreprocessor drops that metadata. grader.grade reports it next to the whole
    notebook's wall time: the difference is what the grading machinery costs (timing.csv), and
    the reference's execution time is its module's time-budget test."""

    def preprocess(self, nb, resources):
        path = os.environ.get("DEEPDIVE_TIMING_FILE")
        if path:
            starts, ends = [], []
            for cell in nb.cells:
                stamps = cell.get("metadata", {}).get("execution", {})
                if "iopub.status.busy" in stamps and "shell.execute_reply" in stamps:
                    starts.append(_utc(stamps["iopub.status.busy"]))
                    ends.append(_utc(stamps["shell.execute_reply"]))
            seconds = (max(ends) - min(starts)).total_seconds() if starts else 0.0
            Path(path).write_text(json.dumps({"execute_s": round(seconds, 3), "cells": len(starts)}))
        return nb, resources


def _utc(stamp: str) -> datetime:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00"))


RUBRIC_TAG = "rubric"  # grader/manual.py: a rubric cell the grader reads under an answer cell


def is_answer_cell(cell) -> bool:
    """An nbgrader "manually graded answer" cell: markdown, graded, written by the learner."""
    meta = cell.get("metadata", {}).get("nbgrader", {})
    return cell.get("cell_type") == "markdown" and bool(meta.get("grade")) and bool(meta.get("solution"))


class RemoveRubrics(NbGraderPreprocessor):
    """Drop the rubric cells that grading puts under each hand-graded answer cell of an executed
    notebook (grader/manual.py): the grader reads them in the formgrader; a feedback page, which goes
    to the learner, never shows them."""

    def preprocess(self, nb, resources):
        nb.cells = [c for c in nb.cells if RUBRIC_TAG not in c.get("metadata", {}).get("tags", [])]
        return nb, resources


class MarkWaitingAnswers(NbGraderPreprocessor):
    """On a feedback page, an answer cell that waits for hand-grading says so in its comment: nbgrader
    shows its score as 0, which is not a grade yet. Runs after GetGrades."""

    text = "Waiting for hand-grading: a person reads this answer with the module's rubric; the 0 above is not a grade yet."

    def preprocess(self, nb, resources):
        from nbgrader.api import Gradebook, MissingEntry

        from grader.manual import answer_grade  # the one rule for "waiting" (grades.csv uses it too)

        meta = resources["nbgrader"]
        with Gradebook(meta["db_url"]) as gb:
            for cell in nb.cells:
                if not is_answer_cell(cell):
                    continue
                nbg = cell.metadata["nbgrader"]
                try:
                    grade = gb.find_grade(nbg["grade_id"], meta["notebook"], meta["assignment"], meta["student"])
                except MissingEntry:
                    continue
                if answer_grade(grade).needs_manual_grade:
                    nbg["comment"] = "\n\n".join(filter(None, [self.text, nbg.get("comment")]))
        return nb, resources
