"""budcache's exceptions: one clear line that says what to change.

Every mistake a caller can make through the public API raises a :class:`BudcacheError` before any transformer
forward. The family subclasses the built-in exception that fits, so ``except ValueError`` (a wrong value),
``except TypeError`` (a wrong type) and ``except RuntimeError`` (a wrong state) keep working."""


class BudcacheError(ValueError):
    """Base of budcache's errors (a ValueError: the input was wrong, not the library)."""


class ArgumentTypeError(BudcacheError, TypeError):
    """An argument of the wrong type (a string where a list of prompts belongs, a dict where a plan belongs)."""


class CalibrationError(BudcacheError):
    """A calibration cannot run as asked (prompts, call arguments, step count, sizes)."""


class PlanError(BudcacheError):
    """A plan file or plan object is invalid, or does not fit the model or call it is used with."""


class SearchError(BudcacheError):
    """A search cannot run as asked (budget, forced steps, start mask)."""


class CheckpointError(SearchError):
    """A search or alignment checkpoint is unreadable or belongs to another run."""


class CacheConflictError(BudcacheError, RuntimeError):
    """Another cache already decides which blocks run (a budcache plan, diffusers' cache hooks, a patched
    forward): remove it first."""


class StateError(BudcacheError, RuntimeError):
    """A call that does not fit the state of the pipeline (no plan applied, a pipeline called from a second
    thread, a transformer compiled whole in place)."""
