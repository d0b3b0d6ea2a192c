"""The one exception type for mistakes a user can fix (bad path, bad flag, bad file), and how a run ends early."""


class AlexnetError(Exception):
    """A user-facing error: the CLI prints its message on one line and exits with `exit_code`."""

    exit_code = 2


class CheckpointWriteError(AlexnetError):
    """A run file could not be written (disk full, read-only folder, no permission); what was saved before
    is intact and loads."""

    exit_code = 74  # EX_IOERR (sysexits.h)


class TrainingStopped(Exception):
    """Training stopped on SIGTERM or SIGINT after saving its position in RUN/last.pt: `alexnet train --resume RUN`
    continues it exactly. `show`: whether this process prints the message (rank 0 under torchrun)."""

    exit_code = 75  # EX_TEMPFAIL (sysexits.h): a temporary failure, run it again

    def __init__(self, message: str, show: bool = True):
        super().__init__(message)
        self.show = show
