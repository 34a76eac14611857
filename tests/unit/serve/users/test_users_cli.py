"""`funnel users`, as an operator runs it (the command's own entry point, in this process),
on a SQLite review database."""

from __future__ import annotations

import io
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from serve.users.accounts import verify_password
from serve.users.store import UserStore


@dataclass
class Ran:
    returncode: int
    stdout: str
    stderr: str


def test_add_list_rotate_disable_and_bad_input(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    from funnel.cli import main

    def run_funnel(*args: str, input: str = "") -> Ran:
        monkeypatch.setattr(sys, "argv", ["funnel", *args])
        monkeypatch.setattr(sys, "stdin", io.StringIO(input))
        monkeypatch.setenv("COLUMNS", "250")
        code: int | str | None = 0
        try:
            main()
        except SystemExit as e:
            code = e.code
        out = capsys.readouterr()
        return Ran(code if isinstance(code, int) else 1, out.out, out.err)

    url = f"sqlite:///{tmp_path / 'review.sqlite3'}"
    db = ["--database-url", url]
    r = run_funnel("users", "add", "rita", "--role", "reviewer", "--password-stdin", *db,
                   input="rita-password-1\n")
    assert r.returncode == 0, r.stderr
    assert "rita-password-1" not in r.stdout + r.stderr
    r = run_funnel("users", "add", "ada", "--role", "admin", "--generate", *db)
    assert r.returncode == 0, r.stderr
    generated = r.stdout.strip()
    assert len(generated) >= 20
    store = UserStore(url)
    assert verify_password(store.require("ada").password_hash, generated)
    r = run_funnel("users", "list", *db)
    assert "rita" in r.stdout and "admin" in r.stdout and "$argon2" not in r.stdout
    r = run_funnel("users", "rotate", "rita", "--password-stdin", *db,
                   input="rita-password-2\n")
    assert r.returncode == 0 and "sessions have ended" in r.stderr
    assert verify_password(store.require("rita").password_hash, "rita-password-2")
    assert run_funnel("users", "disable", "rita", *db).returncode == 0
    assert store.require("rita").disabled
    assert run_funnel("users", "enable", "rita", *db).returncode == 0
    assert not store.require("rita").disabled
    # bad input: exit 2, naming the problem
    for args, words in ((("add", "rita", "--generate"), "exists"),
                        (("add", "x y", "--generate"), "user name"),
                        (("add", "bob", "--role", "owner", "--generate"), "role"),
                        (("add", "bob", "--password-stdin"), "12 to 1024"),
                        (("add", "bob"), "--password-stdin or --generate"),
                        (("disable", "nobody"), "no user")):
        r = run_funnel("users", *args, *db, input="short\n")
        assert r.returncode == 2, (args, r.stdout, r.stderr)
        assert words in r.stderr, (args, r.stderr)
        assert "Traceback" not in r.stderr
    store.close()
