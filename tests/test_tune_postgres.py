"""`alexnet tune --storage postgresql+psycopg://...` against a real PostgreSQL server (tests/postgres.py): workers
in parallel share one study and its trial count, and a worker killed mid-trial leaves a trial that the heartbeat
fails and another worker retries."""

from __future__ import annotations

import functools
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from postgres import postgres_url  # noqa: F401  (the fixture)
from test_tune import SPACE  # quick trials on the tiny folder: a small network, one or two epochs

# RDBStorage's heartbeat_interval is marked experimental by optuna.
pytestmark = pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")

WORKER_TIMEOUT = 90  # seconds any one `alexnet tune` process may take here


def finished_states():
    from optuna.trial import TrialState

    return {TrialState.COMPLETE, TrialState.PRUNED}


def start_tune(data: Path, url: str, study: str, out: Path, trials: int, *flags: str) -> subprocess.Popen:
    """`alexnet tune` in its own process group (a kill takes any child with it), output to OUT.log."""
    space = out.parent / "space.toml"
    if not space.exists():
        space.write_text(SPACE)
    log = open(out.parent / f"{out.name}.log", "w")
    try:
        return subprocess.Popen([sys.executable, "-m", "alexnet", "tune", "--data", str(data), "--storage", url,
                                 "--study", study, "--trials", str(trials), "--space", str(space),
                                 "--out", str(out), *flags],
                                stdout=log, stderr=subprocess.STDOUT, text=True, process_group=0)
    finally:
        log.close()


def log_of(out: Path) -> str:
    return (out.parent / f"{out.name}.log").read_text(errors="replace")[-4000:]


def finish(proc: subprocess.Popen, out: Path, deadline: float) -> int:
    """The exit status of `proc`, killed (and the test failed) if it is still running at `deadline`."""
    try:
        return proc.wait(max(1.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        kill(proc)
        pytest.fail(f"alexnet tune --out {out.name} still running after its time:\n{log_of(out)}")


def kill(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(30)


def create_tables(url: str) -> None:
    """Optuna's tables, made before the workers start: its create_all is not safe when two processes run it at
    once on an empty database, and these tests are about the study, not that race."""
    storage_at(url)


@functools.cache
def storage_at(url: str):
    """One storage (one connection pool) per URL for this test process's reads."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna.storages.RDBStorage(url)


def trials_of(url: str, study: str):
    import optuna

    return optuna.load_study(study_name=study, storage=storage_at(url)).get_trials(deepcopy=False)


def test_the_postgres_fixture_serves_sql_and_an_optuna_study(postgres_url):
    import optuna
    import psycopg

    assert postgres_url.startswith("postgresql+psycopg://")
    with psycopg.connect(postgres_url.replace("postgresql+psycopg://", "postgresql://"), autocommit=True) as conn:
        assert conn.info.host == "127.0.0.1"
        assert conn.execute("SHOW listen_addresses").fetchone() == ("127.0.0.1",)
        assert conn.execute("SHOW fsync").fetchone() == ("off",)
        conn.execute("CREATE TABLE fixture_check (id serial PRIMARY KEY, note text)")
        conn.execute("INSERT INTO fixture_check (note) VALUES (%s), (%s)", ("a", "b"))
        assert conn.execute("SELECT note FROM fixture_check ORDER BY id").fetchall() == [("a",), ("b",)]
        conn.execute("DROP TABLE fixture_check")

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = optuna.storages.RDBStorage(postgres_url, heartbeat_interval=1, grace_period=3)
    study = optuna.create_study(storage=storage, study_name="fixture-check")
    study.optimize(lambda trial: trial.suggest_float("x", -1, 1) ** 2, n_trials=2)
    trials = trials_of(postgres_url, "fixture-check")
    assert [(t.number, t.state) for t in trials] == [(0, optuna.trial.TrialState.COMPLETE),
                                                     (1, optuna.trial.TrialState.COMPLETE)]
    assert all(t.params.keys() == {"x"} for t in trials)


def test_two_workers_share_one_study_and_its_trial_count(postgres_url, tiny_folder, tmp_path):
    flags = ["--time-limit-per-trial", "20", "--seed", "0"]
    outs = [tmp_path / "worker-a", tmp_path / "worker-b"]
    create_tables(postgres_url)
    procs = [start_tune(tiny_folder, postgres_url, "s1", out, 4, *flags) for out in outs]
    deadline = time.monotonic() + WORKER_TIMEOUT
    try:
        codes = [finish(proc, out, deadline) for proc, out in zip(procs, outs)]
    finally:
        for proc in procs:
            kill(proc)
    for code, out in zip(codes, outs):
        assert code == 0, log_of(out)

    trials = trials_of(postgres_url, "s1")
    assert len(trials) == 4, [(t.number, t.state) for t in trials]
    assert {t.state for t in trials} <= finished_states(), [(t.number, t.state) for t in trials]
    assert sorted(t.number for t in trials) == [0, 1, 2, 3]
    # Every trial ran once, in one worker: one run folder each, four between them.
    folders = [p for out in outs for p in (out / "trials").iterdir() if p.is_dir()]
    assert len(folders) == 4, folders
    for out in outs:
        for name in ("trials.csv", "trials.json", "best.toml"):
            assert (out / name).is_file(), f"{out.name}/{name} missing:\n{log_of(out)}"


def test_a_worker_killed_mid_trial_is_failed_by_heartbeat_and_its_trial_retried(postgres_url, tiny_folder, tmp_path):
    """Worker A dies (SIGKILL) in its first trial; worker B finishes the study: the dead trial goes to FAIL when
    its heartbeat is stale, and a copy with the same parameters (system attr failed_trial) runs in its place."""
    from optuna.storages import RetryFailedTrialCallback
    from optuna.trial import TrialState

    import psycopg

    n = 3
    # Trials long enough to be caught running: more epochs than fit in the per-trial time limit.
    (tmp_path / "space.toml").write_text(SPACE.replace("epochs = { low = 1, high = 2 }",
                                                       "epochs = { low = 200, high = 300 }"))
    flags = ["--time-limit-per-trial", "4", "--pruner", "none", "--seed", "1"]
    create_tables(postgres_url)
    start = time.monotonic()
    a_out = tmp_path / "worker-a"
    a = start_tune(tiny_folder, postgres_url, "s2", a_out, n, *flags)
    conninfo = postgres_url.replace("postgresql+psycopg://", "postgresql://")
    try:
        # Killed once a trial runs with its parameters drawn (what the retry copies) and its first heartbeat stored
        # (a running trial without one is never stale).
        running = None
        with psycopg.connect(conninfo, autocommit=True) as conn:
            while running is None:
                assert a.poll() is None, f"worker A exited {a.returncode} before any trial ran:\n{log_of(a_out)}"
                assert time.monotonic() - start < 40, (f"no trial RUNNING with parameters and a heartbeat after "
                                                       f"40 s:\n{log_of(a_out)}")
                try:
                    trials = trials_of(postgres_url, "s2")
                except KeyError:  # the study does not exist yet
                    trials = []
                for t in trials:
                    if t.state == TrialState.RUNNING and t.params and conn.execute(
                            "SELECT 1 FROM trial_heartbeats WHERE trial_id = %s", (t._trial_id,)).fetchone():
                        running = t
                time.sleep(0.1)
        kill(a)
    finally:
        kill(a)
    killed = next(t for t in trials_of(postgres_url, "s2") if t.number == running.number)
    assert killed.state == TrialState.RUNNING, "the trial ended before the kill; lengthen it"

    b_out = tmp_path / "worker-b"
    b = start_tune(tiny_folder, postgres_url, "s2", b_out, n, *flags)
    try:
        assert finish(b, b_out, start + 85) == 0, log_of(b_out)
    finally:
        kill(b)

    trials = trials_of(postgres_url, "s2")
    table = [(t.number, t.state, t.system_attrs.get("failed_trial")) for t in trials]
    done = [t for t in trials if t.state in finished_states()]
    assert len(done) == n, table
    assert [t.number for t in trials if t.state == TrialState.FAIL] == [running.number], table
    assert not [t for t in trials if t.state not in finished_states() | {TrialState.FAIL}], table
    retries = [t for t in done if RetryFailedTrialCallback.retried_trial_number(t) == running.number]
    assert len(retries) == 1, table
    assert retries[0].params == killed.params
    assert sorted(t.number for t in trials) == list(range(n + 1))
