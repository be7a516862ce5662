"""budcache's exceptions: one clear line that says what to change."""


class BudcacheError(ValueError):
    """Base of budcache's errors (a ValueError: the input was wrong, not the library)."""


class PlanError(BudcacheError):
    """A plan file or plan object is invalid, or does not fit the model or call it is used with."""


class SearchError(BudcacheError):
    """A search cannot run as asked (budget, forced steps, start mask)."""


class CheckpointError(SearchError):
    """A search or alignment checkpoint is unreadable or belongs to another run."""
