"""`llmbudget db migrate` against a PostgreSQL server that lacks the database: it says how to create
it, the command it suggests works, and `--create` creates it. Real server on 127.0.0.1:5432."""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import uuid
from collections.abc import Callable, Iterator

import psycopg
import pytest

ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"
Run = Callable[..., subprocess.CompletedProcess[str]]


@pytest.fixture
def new_db() -> Iterator[str]:
    """A database name the server does not have yet; dropped afterwards whatever happened."""
    name = f"llmb_new_{uuid.uuid4().hex[:10]}"
    try:
        yield name
    finally:
        with psycopg.connect(ADMIN, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _exists(name: str) -> bool:
    with psycopg.connect(ADMIN, autocommit=True) as admin:
        return bool(admin.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone())


@pytest.mark.postgres
def test_a_missing_database_is_named_with_the_command_that_creates_it(llmbudget: Run, new_db: str) -> None:
    url = f"postgresql://postgres@127.0.0.1:5432/{new_db}"
    p = llmbudget("db", "migrate", "--db", url)
    assert p.returncode == 1 and "Traceback" not in p.stderr
    (line,) = p.stderr.strip().splitlines()
    assert f"has no database '{new_db}'" in line
    assert f"`createdb -h 127.0.0.1 -p 5432 -U postgres {new_db}`" in line
    assert "llmbudget db migrate --create" in line
    assert not _exists(new_db)
    # the suggested command works as printed
    createdb = re.search(r"`(createdb [^`]+)`", line)
    assert createdb is not None
    assert shutil.which("createdb"), "PostgreSQL's client tools (createdb) belong with the server"
    subprocess.run(shlex.split(createdb.group(1)), check=True, timeout=30)
    assert _exists(new_db)
    p = llmbudget("db", "migrate", "--db", url, "--json")
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout)["created"] is False


@pytest.mark.postgres
def test_migrate_create_makes_the_database_and_migrates_it(llmbudget: Run, new_db: str) -> None:
    url = f"postgresql://postgres@127.0.0.1:5432/{new_db}"
    p = llmbudget("db", "migrate", "--create", "--db", url, "--json")
    assert p.returncode == 0, p.stderr
    data = json.loads(p.stdout)
    assert (
        data["created"] is True and data["migrations"] and all(m["applied_now"] for m in data["migrations"])
    )
    assert _exists(new_db)
    p = llmbudget("db", "migrate", "--create", "--db", url)  # again: nothing to create or apply
    assert p.returncode == 0 and "created database" not in p.stdout and "0 applied now" in p.stdout
    p = llmbudget("costs", "--db", url)  # the other commands read it
    assert p.returncode == 0, p.stderr


@pytest.mark.postgres
def test_create_without_the_privilege_says_what_to_run(llmbudget: Run, new_db: str) -> None:
    role = f"llmb_norole_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(ADMIN, autocommit=True) as admin:
        admin.execute(f'CREATE ROLE "{role}" LOGIN NOCREATEDB')
    try:
        p = llmbudget("db", "migrate", "--create", "--db", f"postgresql://{role}@127.0.0.1:5432/{new_db}")
        assert p.returncode == 1 and "Traceback" not in p.stderr
        assert f"cannot create database '{new_db}'" in p.stderr and "permission denied" in p.stderr
        assert f"createdb -h 127.0.0.1 -p 5432 -U {role} {new_db}" in p.stderr
        assert not _exists(new_db)
    finally:
        with psycopg.connect(ADMIN, autocommit=True) as admin:
            admin.execute(f'DROP ROLE IF EXISTS "{role}"')
