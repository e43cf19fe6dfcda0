"""Many machines: two ``cnn sweep run`` processes sharing one study in a real PostgreSQL server
(a throwaway cluster this module starts on a free loopback port), the password never written
or printed; and bad storage URLs."""

import glob
import json
import os
import pwd
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from test_sweep import ENV, cnn_process, read_csv, write_sweep


def pg_bin(name: str) -> str:
    """A PostgreSQL server program: on PATH, or where Debian puts it."""
    found = shutil.which(name)
    if found:
        return found
    for folder in sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True):
        if os.path.exists(os.path.join(folder, name)):
            return os.path.join(folder, name)
    pytest.fail(f"the PostgreSQL server's {name} is not installed (Debian: apt-get install "
                "postgresql); .ci/run installs it")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def postgres():
    """A throwaway PostgreSQL cluster on 127.0.0.1: a ``connect(dbname)`` for the superuser
    over its Unix socket (trusted), and a role ``cnn`` whose random password lives only in
    memory. PostgreSQL refuses to run as root: then the server runs as the ``postgres`` user."""
    import psycopg

    root = Path(tempfile.mkdtemp(prefix="cnncli-pg-"))
    as_root = os.geteuid() == 0
    prefix = []
    if as_root:
        user = pwd.getpwnam("postgres")
        os.chown(root, user.pw_uid, user.pw_gid)
        prefix = ["runuser", "-u", "postgres", "--"]
    data, port = root / "data", free_port()
    subprocess.run([*prefix, pg_bin("initdb"), "-D", str(data), "-U", "postgres",
                    "--auth-local=trust", "--auth-host=scram-sha-256"],
                   check=True, capture_output=True)
    subprocess.run([*prefix, pg_bin("pg_ctl"), "-D", str(data), "-l", str(root / "server.log"),
                    "-o", f"-p {port} -k {root} -c listen_addresses=127.0.0.1", "-w", "start"],
                   check=True, capture_output=True)
    password = secrets.token_urlsafe(16)

    def connect(dbname="postgres"):
        return psycopg.connect(host=str(root), port=port, user="postgres", dbname=dbname,
                               autocommit=True)

    try:
        with connect() as conn:
            conn.execute(psycopg.sql.SQL("CREATE ROLE cnn LOGIN PASSWORD {}").format(
                psycopg.sql.Literal(password)))
        def pg_ctl(*args):  # "stop" / "start" the server (a test of a server that goes away)
            opts = f"-p {port} -k {root} -c listen_addresses=127.0.0.1"
            subprocess.run([*prefix, pg_bin("pg_ctl"), "-D", str(data), "-l", str(root / "server.log"),
                            "-o", opts, "-w", *args], capture_output=True)

        yield {"port": port, "password": password, "connect": connect, "pg_ctl": pg_ctl}
    finally:
        subprocess.run([*prefix, pg_bin("pg_ctl"), "-D", str(data), "-m", "immediate", "stop"],
                       capture_output=True)
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def database(postgres, request):
    """A new, empty database owned by ``cnn``; its URL (with the password)."""
    name = f"db_{secrets.token_hex(4)}"
    with postgres["connect"]() as conn:
        conn.execute(f"CREATE DATABASE {name} OWNER cnn")
    return f"postgresql+psycopg://cnn:{postgres['password']}@127.0.0.1:{postgres['port']}/{name}"


def files_containing(folder: Path, secret: str) -> list[Path]:
    return [p for p in folder.rglob("*") if p.is_file() and secret.encode() in p.read_bytes()]


def test_two_machines_share_one_study_in_postgres(cnn, tmp_path, database, postgres):
    path = write_sweep(tmp_path, epochs=4, trials=6)
    dirs = [tmp_path / "machine-a", tmp_path / "machine-b"]
    # started at the same moment on an empty database; one gives the URL by option, one by
    # the environment
    a = cnn_process("sweep", "run", path, "--storage", database, "--study", "lr",
                    "--sweep-dir", dirs[0], "--workers", 2)
    b = subprocess.Popen([sys.executable, "-m", "cnncli", "sweep", "run", str(path), "--study", "lr", "--sweep-dir",
                          str(dirs[1]), "--workers", "2"],
                         env={**ENV, "CNNCLI_SWEEP_STORAGE": database}, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    outputs = [p.communicate(timeout=300) for p in (a, b)]
    assert [a.returncode, b.returncode] == [0, 0], outputs
    shown = cnn("sweep", "show", "--storage", database, "--study", "lr", "--json")
    assert shown.exit_code == 0, shown.output
    trials = json.loads(shown.output)["trials"]
    numbers = [t["number"] for t in trials]
    assert numbers == list(range(len(numbers)))  # distinct, none lost
    done = sum(t["state"] == "finished" for t in trials)
    # the machines' workers sample with different seeds: no learning rate drawn twice
    assert len({t["training.learning_rate"] for t in trials}) == len(trials)
    assert 6 <= done <= 6 + 2 * 2  # at most one extra per worker across machines
    mine = [[r for r in read_csv(d / "trials.csv") if r["run_dir"]] for d in dirs]
    assert len(mine[0]) + len(mine[1]) == len(trials) and mine[0] and mine[1]
    for d, rows in zip(dirs, mine):
        assert len(read_csv(d / "trials.csv")) == len(trials)  # the whole study
        for r in rows:
            assert (d / r["run_dir"] / "last.npz").is_file()
        assert "cnn:***@127.0.0.1" in (d / "sweep.yaml").read_text()
    # the password: in no file, in no output
    secret = postgres["password"]
    for d in dirs:
        assert not files_containing(d, secret)
    for text in [*outputs[0], *outputs[1], shown.output, cnn("sweep", "show", dirs[0],
                                                                "--storage", database).output]:
        assert secret not in text
    assert "***" in outputs[0][0]


RACE = """
import sys, time
from cnncli.sweep.storage import open_storage, open_study
url, start = sys.argv[1], float(sys.argv[2])
time.sleep(max(0.0, start - time.time()))
study = open_study(open_storage(url), "race", "maximize", create=True, url=url)
study.tell(study.ask(), 1.0)
print("ok")
"""


def test_processes_creating_tables_and_study_at_one_moment_all_succeed(database):
    import time

    start = time.time() + 6  # every process imported Optuna and waits for this moment
    procs = [subprocess.Popen([sys.executable, "-c", RACE, database, str(start)], env=ENV,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(4)]
    outs = [p.communicate(timeout=120) for p in procs]
    assert [o[0].strip() for o in outs] == ["ok"] * 4, [o[1][-500:] for o in outs]
    from cnncli.sweep.storage import open_storage, open_study

    study = open_study(open_storage(database), "race", "maximize", create=False, url=database)
    assert sorted(t.number for t in study.get_trials()) == [0, 1, 2, 3]


def test_resuming_a_postgres_sweep_needs_its_url(cnn, tmp_path, database, postgres):
    path = write_sweep(tmp_path, epochs=2, trials=1)
    out = tmp_path / "out"
    result = cnn("sweep", "run", path, "--storage", database, "--sweep-dir", out, "--quiet")
    assert result.exit_code == 0, result.output
    result = cnn("sweep", "resume", out)
    assert result.exit_code == 1 and "give its URL with the password" in result.output
    assert postgres["password"] not in result.output
    result = cnn("sweep", "resume", out, "--storage", database)
    assert result.exit_code == 0, result.output
    assert f"{out} is already complete: all 1 trials are done" in result.output
    # the hint an interrupted sweep prints: its workers, and the storage without its password,
    # runnable as printed (in a shell holding the URL in CNNCLI_SWEEP_STORAGE)
    from cnncli.cli.sweep import resume_command
    from cnncli.sweep.driver import read_sweep_dir

    hint = resume_command(out, read_sweep_dir(out), 2, database)
    assert postgres["password"] not in hint
    command = hint.split(" (with ")[0]
    assert command.endswith(' --workers 2 --storage "$CNNCLI_SWEEP_STORAGE"'), hint
    shell = subprocess.run(["bash", "-c", f"cnn() {{ {sys.executable} -m cnncli \"$@\"; }}; "
                            + command],
                           env={**ENV, "CNNCLI_SWEEP_STORAGE": database}, capture_output=True,
                           text=True, timeout=120)
    assert shell.returncode == 0 and "is already complete" in shell.stdout, shell.stderr


def test_bad_storage_urls_are_one_line_and_leave_no_directory(cnn, tmp_path, postgres):
    path = write_sweep(tmp_path, epochs=2, trials=1)
    port, secret = postgres["port"], postgres["password"]
    cases = {
        f"postgresql+psycopg://cnn:{secret}@127.0.0.1:{free_port()}/x": "cannot connect",
        f"postgresql+psycopg://cnn:wrong-{secret}@127.0.0.1:{port}/postgres": "password authentication failed",
        f"foo://cnn:{secret}@127.0.0.1/x": "unknown database scheme 'foo'",
        f"mysql://cnn:{secret}@127.0.0.1/x": "the database driver",
        "not a url": "not a database URL",
    }
    for url, phrase in cases.items():
        out = tmp_path / "out"
        result = cnn("sweep", "run", path, "--storage", url, "--sweep-dir", out)
        assert result.exit_code == 1, (url, result.output)
        lines = result.output.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("Error: --storage "), result.output
        assert phrase in lines[0], lines[0]
        assert secret not in result.output and "Traceback" not in result.output
        assert not out.exists()
