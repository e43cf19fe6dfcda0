"""Storage URLs (issue 24, items 11-12): a password never reaches the screen or a file, for any
URL form; a URL whose password the driver would misread is refused (percent-encode it);
malformed URLs and a real server's refusals (a role without SELECT, a study name over 512
characters, the server stopped mid-sweep) end in one line; ``sqlite:///:memory:`` leaves no
sweep folder behind. The server is the throwaway PostgreSQL of test_sweep_postgres."""

from __future__ import annotations

import secrets
import subprocess
import sys
import time
from urllib.parse import quote

import pytest

from cnncli.sweep.storage import mask_url, scrub, url_problem
from helpers import COUNTS, assert_cli_error
from test_sweep import ENV, write_sweep
from test_sweep_postgres import database, files_containing, free_port, postgres  # noqa: F401

NASTY = "Pw9x/Se#cr?et@Z%41"  # every character a URL gives a meaning to


@pytest.mark.parametrize("url", [
    f"postgresql+psycopg://u:{quote(NASTY, safe='')}@127.0.0.1:1/db",
    f"postgresql+psycopg://u:{quote(NASTY, safe='')}@[::1]:5432/db",
    f"postgresql+psycopg://u@127.0.0.1/db?password={quote(NASTY, safe='')}",
    f"postgresql+psycopg://u:{quote(NASTY, safe='')}@127.0.0.1:abc/db",
    f"postgresql+psycopg://u:{quote(NASTY, safe='')}@[::1:5432/db",
    f"postgresql://u:{quote(NASTY, safe='')}@h/db?sslmode=require&password=x{quote(NASTY, safe='')}",
])
def test_the_mask_hides_every_form_of_the_password(url):
    shown = mask_url(url)
    for secret in (NASTY, quote(NASTY, safe=""), "Se", "et", "Pw9x"):
        assert secret not in shown, shown
    assert "***" in shown
    assert NASTY not in scrub(f"driver said: bad password {NASTY!r} for {url}", url)


@pytest.mark.parametrize("raw", ["Pw9x/SecretZ", "Pw9x#SecretZ", "Pw9x?SecretZ", "Pw9x@SecretZ"])
def test_a_raw_special_character_in_the_password_is_refused(cnn, tmp_path, raw):
    url = f"postgresql+psycopg://u:{raw}@127.0.0.1:1/db"
    assert url_problem(url)
    path = write_sweep(tmp_path, epochs=1, trials=1)
    out = tmp_path / "out"
    line = assert_cli_error(cnn("sweep", "run", path, "--storage", url, "--sweep-dir", out),
                            "percent-encode")
    assert "SecretZ" not in line and not out.exists()


def test_ordinary_urls_are_not_refused():
    for url in ("postgresql+psycopg://cnn@db-host/cnncli", "sqlite:///runs/sweep@1.db",
                f"postgresql+psycopg://cnn:{quote(NASTY, safe='')}@h:5432/db", "sqlite:////abs/x.db"):
        assert url_problem(url) is None, url


@pytest.mark.parametrize("url, phrase", [
    ("postgresql+psycopg://u:SecretZ@127.0.0.1:abc/db", "the port is not a number"),
    ("postgresql+psycopg://u:SecretZ@[::1:5432/db", "unclosed '['"),
    ("postgresql+psycopg://[::1:5432/db", "unclosed '['"),
    ("postgresql+psycopg://db-host:x5432/db", "the port is not a number"),
    ("sqlite:///:memory:", "in-memory database"),
    ("sqlite://", "in-memory database"),
])
def test_malformed_and_in_memory_urls_are_one_line_and_leave_no_folder(cnn, tmp_path, url, phrase):
    path = write_sweep(tmp_path, epochs=1, trials=1)
    out = tmp_path / "out"
    line = assert_cli_error(cnn("sweep", "run", path, "--storage", url, "--sweep-dir", out), phrase)
    assert "SecretZ" not in line and not out.exists()
    assert "StorageInternalError" not in line


# ------------------------------------------------------------ a real server
def new_role(postgres, password: str, dbname: str | None = None, owner: bool = True) -> str:
    import psycopg

    role = f"r_{secrets.token_hex(4)}"
    name = dbname or f"db_{secrets.token_hex(4)}"
    with postgres["connect"]() as conn:
        conn.execute(psycopg.sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(
            psycopg.sql.Identifier(role), psycopg.sql.Literal(password)))
        if dbname is None:
            conn.execute(f"CREATE DATABASE {name} OWNER {role if owner else 'cnn'}")
        conn.execute(f"GRANT CONNECT ON DATABASE {name} TO {role}")
    return f"postgresql+psycopg://{role}:{quote(password, safe='')}@127.0.0.1:{postgres['port']}/{name}"


def test_a_nasty_password_reaches_no_output_and_no_file(cnn, tmp_path, postgres):
    url = new_role(postgres, NASTY)
    path = write_sweep(tmp_path, epochs=1, trials=1)
    out = tmp_path / "out"
    COUNTS["hostile"] += 1
    p = subprocess.run([sys.executable, "-m", "cnncli", "sweep", "run", str(path), "--storage", url,
                        "--sweep-dir", str(out)], env=ENV, capture_output=True, text=True,
                       timeout=300)
    assert p.returncode == 0, p.stderr
    texts = [p.stdout, p.stderr]
    for args in (("sweep", "show", out, "--storage", url), ("sweep", "show", out, "--storage", url,
                                                            "--json"),
                 ("sweep", "show", "--storage", url, "--study", "s"), ("runs", tmp_path),
                 ("sweep", "resume", out), ("sweep", "resume", out, "--storage", url + "x"),
                 ("sweep", "run", path, "--storage", url.replace("127.0.0.1", "no-such-host.invalid"),
                  "--sweep-dir", tmp_path / "other")):
        texts.append(cnn(*args).output)
    for secret in (NASTY, quote(NASTY, safe=""), "Se#cr?et"):
        assert not files_containing(out, secret), secret
        for text in texts:
            assert secret not in text, (secret, text)
    assert "***" in (out / "sweep.yaml").read_text()


def test_a_role_without_select_is_one_line(cnn, tmp_path, postgres, database):
    from cnncli.sweep.storage import open_storage

    open_storage(database)  # the tables, owned by cnn
    dbname = database.rsplit("/", 1)[1]
    url = new_role(postgres, "pw-" + secrets.token_hex(4), dbname=dbname)
    path = write_sweep(tmp_path, epochs=1, trials=1)
    out = tmp_path / "out"
    line = assert_cli_error(cnn("sweep", "run", path, "--storage", url, "--sweep-dir", out),
                            "--storage ", "permission denied")
    assert "StorageInternalError" not in line and not out.exists()


def test_a_study_name_over_512_characters_is_one_line(cnn, tmp_path, database):
    path = write_sweep(tmp_path, epochs=1, trials=1)
    out = tmp_path / "out"
    line = assert_cli_error(cnn("sweep", "run", path, "--storage", database, "--study", "x" * 600,
                                "--sweep-dir", out), "--study", "512")
    assert not out.exists() and "StorageInternalError" not in line
    line = assert_cli_error(cnn("sweep", "show", "--storage", database, "--study", "x" * 600),
                            "512")


def test_the_server_stopped_mid_sweep_is_one_line(tmp_path, database, postgres):
    """Last in this module: it stops the server (then starts it again)."""
    path = write_sweep(tmp_path, epochs=30, trials=4)
    out = tmp_path / "out"
    COUNTS["hostile"] += 1
    proc = subprocess.Popen([sys.executable, "-m", "cnncli", "sweep", "run", str(path), "--storage",
                             database, "--sweep-dir", str(out)], env=ENV, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not list(out.glob("trials/*/metrics.csv")) and time.monotonic() < deadline:
            time.sleep(0.2)
        postgres["pg_ctl"]("-m", "immediate", "stop")
        stdout, stderr = proc.communicate(timeout=180)
    finally:
        if proc.poll() is None:
            proc.kill()
        postgres["pg_ctl"]("start")
    assert proc.returncode == 1, (stdout, stderr)
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), stderr
    # the driver notices first (the storage's one line), or its workers do (their exit codes)
    assert "--storage " in lines[0] or "the workers stopped" in lines[0], lines[0]
    assert "a bug in cnncli" not in lines[0] and "Traceback" not in stderr
    assert "StorageInternalError" not in lines[0], lines[0]
    assert postgres["password"] not in stderr + stdout
    assert not files_containing(out, postgres["password"])  # workers.log included
