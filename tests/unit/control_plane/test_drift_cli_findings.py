"""`syncgov drift report` reading snapshots a hostile review built: every unreadable line is exit 2, never a
traceback."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from libs.cli.main import app

EXIT_USAGE = 2  # the CLI's documented exit code for a snapshot that cannot be read


def run(stdin: str):
    # 127.0.0.1:9 is never contacted if the snapshot is refused first, as documented.
    return CliRunner().invoke(
        app, ["drift", "report", "--system", "erp", "--address", "127.0.0.1:9"], input=stdin, env={"COLUMNS": "200"}
    )


def test_cli_snapshot_with_a_version_beyond_int64_exits_2_not_1():
    """A version no field can hold is an unreadable snapshot line (exit 2), not a traceback read as drift (exit 1)."""
    result = run(json.dumps({"key": "PO-1", "version": 2**63}) + "\n")
    assert result.exit_code == EXIT_USAGE, (result.exit_code, repr(result.exception))


def test_cli_snapshot_with_a_lone_surrogate_key_exits_2_not_1():
    """A key JSON can carry and protobuf cannot encode (a lone surrogate) is an unreadable line (exit 2)."""
    result = run('{"key": "PO-\\ud800", "version": 1}\n')
    assert result.exit_code == EXIT_USAGE, (result.exit_code, repr(result.exception))


def test_cli_snapshot_version_true_is_refused():
    """A boolean version (a Python int) is refused, not reported as v1."""
    result = run(json.dumps({"key": "PO-1", "version": True}) + "\n")
    assert result.exit_code == EXIT_USAGE, (result.exit_code, result.output)
