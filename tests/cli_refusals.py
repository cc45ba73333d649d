"""What the command-line tests share: a command line that parse_args must refuse."""

from __future__ import annotations

import pytest

from disagmoe_bench import bench


def refused(argv: list[str], capsys) -> str:
    """parse_args refuses `argv` with parser.error's one line (exit code 2); returns it."""
    with pytest.raises(SystemExit) as info:
        bench.parse_args(argv)
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert info.value.code == 2 and err.startswith("disagmoe-bench: error:"), err
    return err
