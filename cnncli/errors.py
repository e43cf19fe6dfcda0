"""The errors cnncli raises on bad input. The CLI turns each into one line on stderr."""


class CnnError(Exception):
    """Base class: a problem the user can fix, with a message that says where and what."""


class ConfigError(CnnError):
    """A config file (or a layer spec, or a CLI override) is not valid."""

    def __init__(self, problems, source=None):
        if isinstance(problems, str):
            problems = [problems]
        self.problems = list(problems)
        self.source = source
        prefix = f"{source}: " if source else ""
        if len(self.problems) == 1:
            message = prefix + self.problems[0]
        else:
            message = f"{prefix}{len(self.problems)} problems: " + "; ".join(self.problems)
        super().__init__(message)


def about_value(exc: CnnError, param: str, shown: str, problem) -> CnnError:
    """``exc``, marked as a problem (``problem``: its text, or a ConfigError's problems) with the
    value ``shown`` of the library parameter ``param``, so that the command line can re-word it
    with the option that gave the value (library messages name no command-line option)."""
    exc.param, exc.shown, exc.problem = param, shown, problem
    return exc


class CheckpointError(CnnError):
    """A checkpoint file is missing, corrupt, or does not fit the network."""


class DataError(CnnError):
    """A dataset file is missing, corrupt, or holds arrays of the wrong kind."""


class TrainingError(CnnError):
    """Training cannot go on (a non-finite loss, say)."""


class RunDirError(CnnError):
    """A run directory cannot be used (exists already, locked, not writable)."""


class SweepError(CnnError):
    """A sweep cannot start or go on (a bad sweep file, an unreachable storage, a sweep directory
    holding another sweep)."""
