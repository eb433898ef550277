"""The nbgrader server's shortcuts must not change what nbgrader does: the gradebook revision it
stamps without running `alembic heads`, and the warm-up page it renders before forking (a
warm-up that failed would pass silently in the server, so it is run here, where it must not)."""

import nbgrader.api

from grader import nbgrader_server


def test_the_alembic_head_asked_in_process_is_the_one_the_alembic_command_prints():
    assert nbgrader_server._alembic_head() == nbgrader.api.get_alembic_version()


def test_the_warm_ups_run_without_error():
    nbgrader_server._warm_gradebook()
    nbgrader_server._warm_feedback()
