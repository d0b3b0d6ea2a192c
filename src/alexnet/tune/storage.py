"""Where a study lives, and how a trial whose worker died is found and run again.

Default: a journal file, DIR/journal.log (optuna's JournalStorage on a JournalFileBackend). Its lock is a file
created with O_EXCL beside the log, so any number of processes on this machine (or on machines sharing DIR over
NFSv3 or later) append to it in turn. `--storage URL` takes any SQLAlchemy URL (postgresql://USER@HOST/DB,
mysql+pymysql://..., sqlite:///FILE) for optuna's RDBStorage: workers on many machines share the database.

A worker killed outright (SIGKILL, a lost machine) leaves its trial RUNNING. Two ways bring it back:

* RDBStorage records a heartbeat for the running trial every HEARTBEAT_INTERVAL seconds; once a trial's is
  GRACE_PERIOD seconds old, the next worker to look fails it and optuna's retry callback queues a copy with the
  same parameters (system attrs `failed_trial`, `retry_history`). Workers anywhere see it.
* Optuna's journal storage records no heartbeat (as of optuna 5.0), so each trial records its worker: host name,
  process id and that process's start time (user attr `worker`). A worker on the same host whose process is gone
  (or is another process by now) is dead: its trial is failed and queued again by the same retry callback, under
  a lock file so that two workers starting together retry it once. That works on any storage, so it runs for
  the database too, where it is quicker than the heartbeat; a worker on another machine is judged by the
  heartbeat alone (the database), or not at all (a journal shared over NFS: its trials are left running).
"""

from __future__ import annotations

import contextlib
import inspect
import os
import socket
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

from ..errors import AlexnetError

HEARTBEAT_INTERVAL = 10  # seconds between a running trial's heartbeats (database storage)
GRACE_PERIOD = 30  # a trial whose last heartbeat is this old is failed and retried
JOURNAL = "journal.log"
LOCK = "tune.lock"


@dataclass
class Storage:
    storage: Any  # the optuna storage
    description: str  # for messages: the journal's path or the URL without its password
    heartbeat: bool  # RDB: optuna fails trials whose heartbeat stopped


def quiet_optuna() -> None:
    """optuna's own lines (a study created, each trial's result) give way to alexnet's; its notices that a
    feature is experimental or renamed say nothing a user of `alexnet tune` can act on."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.ERROR)  # a failed trial's warning too: alexnet prints its own
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"optuna(\.|$)")


def retry_callback() -> Any:
    """Optuna's callback that queues a failed trial again with its parameters (RetryHeartbeatStaleTrialCallback
    since optuna 4.9, RetryFailedTrialCallback before)."""
    import optuna

    cls = getattr(optuna.storages, "RetryHeartbeatStaleTrialCallback", None) or optuna.storages.RetryFailedTrialCallback
    return cls()


def database_url(url: str) -> str:
    """A bare postgresql:// URL names psycopg (version 3, the `tune` extra's driver); SQLAlchemy before 2.1
    would look for psycopg2."""
    for bare in ("postgresql://", "postgres://"):
        if url.startswith(bare):
            return "postgresql+psycopg://" + url[len(bare):]
    return url


def open_storage(url: str | None, out: Path) -> Storage:
    """The journal in `out` (or the journal file `url` names), or the database at `url`."""
    import optuna

    if url is None or "://" not in url:
        path = Path(url) if url else out / JOURNAL
        from optuna.storages.journal import JournalFileBackend, JournalFileOpenLock, JournalStorage

        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            backend = JournalFileBackend(str(path), lock_obj=JournalFileOpenLock(str(path)))
        except OSError as e:
            raise AlexnetError(f"the study's journal {path} cannot be written ({e.strerror or e})") from None
        return Storage(JournalStorage(backend), str(path), heartbeat=False)

    # lazy: SQLAlchemy (optuna's dependency) only for a database URL
    import sqlalchemy.exc
    from sqlalchemy.engine import make_url

    url = database_url(url)
    try:
        shown = make_url(url).render_as_string(hide_password=True)
    except sqlalchemy.exc.ArgumentError as e:
        raise AlexnetError(f"--storage {url!r} is no database URL ({e}); e.g. postgresql://USER@HOST/DB") from None
    # optuna 4.9 renamed failed_trial_callback to heartbeat_stale_trial_callback.
    params = inspect.signature(optuna.storages.RDBStorage).parameters
    callback = "heartbeat_stale_trial_callback" if "heartbeat_stale_trial_callback" in params else \
        "failed_trial_callback"
    try:
        storage = optuna.storages.RDBStorage(url, engine_kwargs={"pool_pre_ping": True},
                                             heartbeat_interval=HEARTBEAT_INTERVAL, grace_period=GRACE_PERIOD,
                                             **{callback: retry_callback()})
    except ImportError as e:
        raise AlexnetError(f"--storage {shown} needs the database's driver ({e.name or e}): pip install "
                           "'alexnet[tune]' has psycopg for PostgreSQL") from None
    except (sqlalchemy.exc.SQLAlchemyError, ValueError) as e:
        reason = " ".join(str(getattr(e, "orig", None) or e).split())[:300]
        raise AlexnetError(f"--storage {shown}: cannot open the database ({reason})") from None
    return Storage(storage, shown, heartbeat=True)


# ------------------------------------------------------------------------------------------------ workers
def worker_identity(trial_number: int) -> dict[str, Any]:
    """This process, as the trial records it (user attr `worker`): what tells a dead worker from a live one."""
    return {"host": socket.gethostname(), "pid": os.getpid(), "started": psutil.Process().create_time(),
            "trial": trial_number}


def is_dead(worker: Any) -> bool:
    """A worker of this host whose process is gone, or whose process id now belongs to a later process. Another
    host's worker is never judged here (its process table is not ours)."""
    if not isinstance(worker, dict) or worker.get("host") != socket.gethostname():
        return False
    try:
        started = psutil.Process(int(worker["pid"])).create_time()
    except psutil.NoSuchProcess:
        return True
    except (psutil.Error, KeyError, TypeError, ValueError):
        return False
    return abs(started - float(worker.get("started", started))) > 0.01


@contextlib.contextmanager
def locked(out: Path) -> Iterator[None]:
    """One process of this machine at a time (an advisory lock on DIR/tune.lock; the kernel drops it with the
    process, so a killed worker never leaves it held)."""
    import fcntl  # lazy: POSIX only, and only `alexnet tune` takes the lock

    out.mkdir(parents=True, exist_ok=True)
    with open(out / LOCK, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def fail_dead_trials(study: Any, out: Path, heartbeat: bool) -> list[int]:
    """Fail the RUNNING trials whose worker died and queue each again with its parameters (the retry callback);
    with a database also those whose heartbeat stopped (optuna's fail_stale_trials). The trial numbers failed
    here."""
    import optuna
    from optuna.trial import TrialState

    failed = []
    with locked(out):
        for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            worker = trial.user_attrs.get("worker")
            # A retried trial starts with the attrs of the one it repeats: until it records its own worker, the
            # worker named is the dead one's, not this trial's.
            if not isinstance(worker, dict) or worker.get("trial") != trial.number or not is_dead(worker):
                continue
            try:
                study.tell(trial.number, state=TrialState.FAIL)
            except (ValueError, RuntimeError):  # another worker ended it first
                continue
            retry_callback()(study, trial)
            failed.append(trial.number)
    if heartbeat:
        optuna.storages.fail_stale_trials(study)
    return failed
