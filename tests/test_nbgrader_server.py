"""The nbgrader server's shortcuts must not change what nbgrader does: the gradebook revision it
stamps without running `alembic heads`, and the warm-up page it renders before forking (a
warm-up that failed would pass silently in the server, so it is run here, where it must not); and
the kernels it starts in a Dask worker must not inherit the worker's own tuning."""

import nbgrader.api

from grader import nbgrader_server


def test_the_alembic_head_asked_in_process_is_the_one_the_alembic_command_prints():
    assert nbgrader_server._alembic_head() == nbgrader.api.get_alembic_version()


def test_the_warm_ups_run_without_error():
    nbgrader_server._warm_gradebook()
    nbgrader_server._warm_feedback()


def test_kernels_do_not_inherit_a_dask_workers_tuning(monkeypatch):
    import distributed  # noqa: F401  (as in a grading worker)

    from grader.nbgrader_cli import nbgrader_env

    monkeypatch.setenv("MALLOC_TRIM_THRESHOLD_", "65536")  # what a Dask nanny sets for its worker
    monkeypatch.setenv("PYTHONHASHSEED", "6640")
    env = nbgrader_env()
    assert "MALLOC_TRIM_THRESHOLD_" not in env and env["PYTHONHASHSEED"] == "0"
    monkeypatch.setenv("MALLOC_TRIM_THRESHOLD_", "1000000")  # an instructor's own setting is kept
    assert nbgrader_env()["MALLOC_TRIM_THRESHOLD_"] == "1000000"
