"""Live servers for tests and benchmarks: a PostgreSQL database in a temporary cluster and a real ``mlflow server``.

Context managers, not fixtures, so that a test, a benchmark script or a sweep test can stack them::

    with postgres_database(tmp_path) as database, mlflow_server(database, tmp_path / "artifacts") as url:
        ...  # url = "http://127.0.0.1:PORT", a tracking URI

Both stop their server (and remove its files) however the block ends, and print the server's log to
stderr when it fails to start or when the block raises, so that a failing test shows why.
:func:`job_processes` gives the parallel jobs that log to them fresh processes that start in a moment.
"""

from __future__ import annotations

import multiprocessing
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from multiprocessing import forkserver
from multiprocessing.context import ForkServerContext
from pathlib import Path

POSTGRES_ACCOUNT = "postgres"
"""The unprivileged system account PostgreSQL runs as when we are root (PostgreSQL refuses to run as
root); Debian's and Ubuntu's ``postgresql`` packages create it."""
POSTGRES_SUPERUSER = "brainbench"
"""The database superuser ``initdb`` creates; local TCP connections are trusted (no password)."""
LOG_TAIL_CHARS = 20_000
JOB_PRELOAD = ("brainbench.training.fit", "brainbench.tracking.mlflow", "mlflow.store.tracking.sqlalchemy_store",
               "mlflow.store.tracking.rest_store")
"""What a job process that logs like brainbench's trainer imports: torch, Lightning, MLflow and its stores."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now (the OS picks it; another process could
    take it before the caller binds it, which on a test machine does not happen in practice)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def job_processes() -> ForkServerContext:
    """A multiprocessing context for parallel jobs that log to these servers: fresh processes, as a
    sweep's jobs are, forked from a server process that imported :data:`JOB_PRELOAD` once (a spawned
    process takes ~8 s to import them on two cores; a fork of the caller would share its MLflow stores).
    The server starts now, so that its imports overlap the caller's next steps (a server's start-up).
    It preloads installed modules only: Python 3.11's forkserver does not get the caller's ``sys.path``."""
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(list(JOB_PRELOAD))
    forkserver.ensure_running()
    return context


def postgres_bin() -> Path:
    """The folder of PostgreSQL's programs (``initdb``, ``pg_ctl``, ``createdb``): the one ``pg_ctl`` on the
    ``PATH`` links to, else the newest of Debian's ``/usr/lib/postgresql/<major>/bin``."""
    on_path = shutil.which("pg_ctl")
    debian = sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=lambda p: -int(p.parent.name)
                    if p.parent.name.isdigit() else 0)
    for folder in [Path(on_path).resolve().parent] * bool(on_path) + debian:
        if all((folder / name).is_file() for name in ("initdb", "pg_ctl", "createdb")):
            return folder
    raise FileNotFoundError("PostgreSQL is not installed: no initdb/pg_ctl/createdb next to the PATH's pg_ctl "
                            "nor in /usr/lib/postgresql/*/bin (apt-get install postgresql)")


def _as_postgres_account(command: list[str]) -> list[str]:
    """``command`` as PostgreSQL must run it: unchanged for an ordinary user, through ``runuser`` as
    :data:`POSTGRES_ACCOUNT` for root."""
    if os.geteuid() != 0:
        return command
    try:
        pwd.getpwnam(POSTGRES_ACCOUNT)
    except KeyError:
        raise RuntimeError(f"running as root, PostgreSQL needs the unprivileged system account "
                           f"{POSTGRES_ACCOUNT!r}, which does not exist (the postgresql package creates it)") from None
    return ["runuser", "-u", POSTGRES_ACCOUNT, "--", *command]


def _print_log(name: str, text: str) -> None:
    """A server's log (its last :data:`LOG_TAIL_CHARS` characters) on stderr, for a failing test's report."""
    sys.stderr.write(f"\n----- {name} log (tail) -----\n{text[-LOG_TAIL_CHARS:]}\n----- end of {name} log -----\n")


def _run(command: list[str], **kwargs) -> None:
    """Run a server-management command; its output becomes the exception's message if it fails."""
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, **kwargs)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} exited with {done.returncode}:\n{done.stdout}{done.stderr}")


@contextmanager
def postgres_database(folder: Path, database: str = "mlflow") -> Iterator[str]:
    """A fresh PostgreSQL cluster serving one empty ``database`` on 127.0.0.1; yields its SQLAlchemy URI
    ``postgresql://brainbench@127.0.0.1:PORT/<database>`` (read by SQLAlchemy ≥ 2.1 with psycopg 3, the
    ``postgres`` extra).

    The cluster (data directory and unix socket) lives in a private folder of the system temporary
    folder, not in ``folder``: as root the server runs as :data:`POSTGRES_ACCOUNT`, which cannot enter a
    root-only folder such as pytest's ``tmp_path``, and a unix socket path must stay under 108 bytes.
    The server's log is copied to ``folder/postgres.log`` when it stops. Settings are
    PostgreSQL's defaults (durable commits) apart from the address, port and socket folder.
    """
    binaries = postgres_bin()
    cluster = Path(tempfile.mkdtemp(prefix="brainbench-pg-"))
    data, log = cluster / "data", cluster / "postgres.log"
    if os.geteuid() == 0:
        account = pwd.getpwnam(POSTGRES_ACCOUNT)
        os.chown(cluster, account.pw_uid, account.pw_gid)
    port = free_port()
    try:
        _run(_as_postgres_account([str(binaries / "initdb"), "-D", str(data), "-U", POSTGRES_SUPERUSER,
                                   "--auth=trust", "--encoding=UTF8", "--no-locale", "--no-sync",
                                   "--no-instructions"]), cwd=cluster)
        with open(data / "postgresql.conf", "a") as conf:
            conf.write(f"\nlisten_addresses = '127.0.0.1'\nport = {port}\nunix_socket_directories = '{cluster}'\n")
        _run(_as_postgres_account([str(binaries / "pg_ctl"), "start", "-D", str(data), "-l", str(log),
                                   "-w", "-t", "60"]), cwd=cluster)
        _run([str(binaries / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", POSTGRES_SUPERUSER, database])
        yield f"postgresql://{POSTGRES_SUPERUSER}@127.0.0.1:{port}/{database}"
    except BaseException:
        _print_log("PostgreSQL", log.read_text(errors="replace") if log.is_file() else "(no log written)")
        raise
    finally:
        try:
            if (data / "postmaster.pid").is_file():  # the server is up (or pg_ctl start gave up waiting on it)
                _run(_as_postgres_account([str(binaries / "pg_ctl"), "stop", "-D", str(data), "-m", "fast",
                                           "-w", "-t", "60"]), cwd=cluster)
        finally:
            if log.is_file():
                folder.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(log, folder / "postgres.log")
            shutil.rmtree(cluster, ignore_errors=True)


@contextmanager
def mlflow_server(backend_uri: str, artifacts: Path, workers: int = 1, timeout: float = 180.0) -> Iterator[str]:
    """A real ``mlflow server`` on 127.0.0.1 (a free port) storing runs in ``backend_uri`` and serving
    artifacts from ``artifacts`` (``--serve-artifacts`` is MLflow's default: clients upload through the
    server); yields its tracking URI ``http://127.0.0.1:PORT`` once ``/health`` answers.

    ``workers``: uvicorn worker processes. One worker already serves concurrent requests (the Flask app
    runs in uvicorn's thread pool) and starts twice as fast on two cores as two workers, each of which
    imports MLflow anew. MLflow's job runner (GenAI judges and scheduled trace jobs, two more processes)
    is switched off. Requests to ``127.0.0.1`` pass MLflow 3's host-header check by default. The server's
    process group is terminated at exit (SIGKILL after 15 s).
    """
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    command = [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
               "--backend-store-uri", backend_uri, "--artifacts-destination", str(artifacts),
               "--workers", str(workers)]
    environment = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    with tempfile.TemporaryFile("w+") as log:
        server = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=environment,
                                  start_new_session=True)
        try:
            _wait_for_health(url, server, timeout)
            yield url
        except BaseException:
            log.seek(0)
            _print_log("mlflow server", log.read())
            raise
        finally:
            _stop_group(server)


def _wait_for_health(url: str, server: subprocess.Popen, timeout: float) -> None:
    """Poll ``url/health`` until it answers 200; fail early if the server exits."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"mlflow server exited with {server.returncode} before answering {url}/health")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.2)
    raise TimeoutError(f"mlflow server did not answer {url}/health within {timeout:.0f} s")


def _stop_group(process: subprocess.Popen, grace: float = 15.0) -> None:
    """SIGTERM the process's group (the MLflow CLI, uvicorn and its workers); SIGKILL what is left of it
    after ``grace`` seconds."""
    try:
        os.killpg(process.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + grace
    try:
        process.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        pass
    while time.monotonic() < deadline:
        try:
            os.killpg(process.pid, 0)  # any member left (uvicorn outlives the CLI by a moment)?
        except ProcessLookupError:
            return
        time.sleep(0.1)
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        return
    process.wait()
