from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from ephq import Queue

START_NS = 1_800_000_000 * 1_000_000_000  # 2027-01-15, far from any real clock edge


class FakeClock:
    """Time that moves only when a test says so."""

    def __init__(self, start_ns: int = START_NS) -> None:
        self.now_ns = start_ns

    def __call__(self) -> int:
        return self.now_ns

    def advance(self, seconds: float) -> None:
        self.now_ns += round(seconds * 1_000_000_000)


@pytest.fixture
def home(tmp_path: Path) -> Path:
    return tmp_path / "home"


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "both_backends: run the test on the file backend and on PostgreSQL"
    )


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """A test that uses the store fixture runs on files; one marked both_backends (or in a
    module so marked) also on PostgreSQL: one suite for both, not a copy."""
    if "store" in metafunc.fixturenames:
        both = metafunc.definition.get_closest_marker("both_backends") is not None
        kinds = ["files", "postgres"] if both else ["files"]
        metafunc.parametrize("store", kinds, indirect=True)


@pytest.fixture(scope="session")
def database_server() -> Iterator[str]:
    """A PostgreSQL server for this test process: EPHQ_TEST_DATABASE_URL, or a throwaway one."""
    given = os.environ.get("EPHQ_TEST_DATABASE_URL")
    if given:
        yield _database_of_this_process(given)
        return
    from tests.pgserver import Server, binaries

    bin_dir = binaries()
    if bin_dir is None:
        pytest.skip("no PostgreSQL server binaries (initdb) on this machine")
    server = Server(bin_dir)
    try:
        yield server.url
    finally:
        server.destroy()


def _database_of_this_process(url: str) -> str:
    """A database of its own for each test process on a shared server (pytest -n runs several,
    and each test drops the schema): <the URL's database>_<worker>, made if missing."""
    from urllib.parse import urlsplit, urlunsplit

    import psycopg
    from psycopg import sql

    worker = os.environ.get("PYTEST_XDIST_WORKER", "main")
    parts = urlsplit(url)
    name = f"{parts.path.strip('/') or 'postgres'}_ephq_{worker}"
    with psycopg.connect(url, autocommit=True) as conn:
        if conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone() is None:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    return urlunsplit(parts._replace(path=f"/{name}"))


def fresh_database(url: str) -> str:
    """url, with ephq's schema dropped: each test starts from an empty database."""
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        # A session an earlier test left behind (a SIGKILLed client's server process finishing
        # its statement, a queue not yet collected) must not hold a lock the DROP needs: the
        # two deadlocked once. The database is this test process's own (above).
        conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )
        conn.execute("DROP SCHEMA IF EXISTS ephq CASCADE")
    return url


@pytest.fixture
def store(request: pytest.FixtureRequest, home: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """What a Queue is opened on: "files" (the home fixture), or a PostgreSQL URL. The URL is
    also put in EPHQ_TEST_URL, where the helpers that run `ephq` and open queues for a test
    (open_store, tests/test_cli.py's ephq) find it."""
    if request.param == "files":
        monkeypatch.delenv(TEST_URL, raising=False)
        return "files"
    url = fresh_database(request.getfixturevalue("database_server"))
    monkeypatch.setenv(TEST_URL, url)
    return url


TEST_URL = "EPHQ_TEST_URL"


def store_environment(home: Path) -> dict[str, str]:
    """The variable naming the test's store to an `ephq` process: EPHQ_URL or EPHQ_HOME."""
    url = os.environ.get(TEST_URL)
    return {"EPHQ_URL": url} if url else {"EPHQ_HOME": str(home)}


def open_store(home: Path, **options: object) -> Queue:
    """A Queue on the test's store: PostgreSQL when the store fixture chose it, else home.

    Without keeping leases unless asked: tests rarely close their Queues, and a keeping one's
    thread would go on announcing (a row, on PostgreSQL) into the next test's store."""
    options.setdefault("keep_leases", False)
    url = os.environ.get(TEST_URL)
    if url:
        return Queue(url=url, **options)  # type: ignore[arg-type]
    return Queue(home, **options)  # type: ignore[arg-type]


def open_queue(store: str, home: Path, **options: object) -> Queue:
    if store == "files":
        return Queue(home, **options)  # type: ignore[arg-type]
    return Queue(url=store, **options)  # type: ignore[arg-type]


@pytest.fixture
def q(store: str, home: Path, clock: FakeClock) -> Iterator[Queue]:
    # Without keeping leases: its thread's holder file would appear in the store at any moment
    # (tests that compare the store before and after), and its deadlines are the fake clock's.
    # tests/test_features.py tests keeping.
    queue = open_queue(store, home, clock=clock, keep_leases=False)
    yield queue
    queue.close()


@pytest.fixture
def realq(home: Path) -> Iterator[Queue]:
    queue = Queue(home)
    yield queue
    queue.close()


def snapshot(root: Path) -> dict[str, bytes]:
    """Every file under root with its contents: 'nothing changed' is snapshot equality."""
    files: dict[str, bytes] = {}
    if not root.exists():
        return files
    for dirpath, _, names in os.walk(root):
        for name in names:
            path = Path(dirpath) / name
            files[str(path.relative_to(root))] = path.read_bytes()
    return files
