"""The classic search: from each start, annealing (``iterations`` proposals) then screened hill
climbing; when a local search's starts end more than ``RUGGED`` apart, annealing as well
(``escalate``); then ``kicks``. It does not plan its spending: uncapped unless ``max_forwards`` is set.
Choosing the rule (``SearchConfig.choose``), the first start is scored under each rule and the search goes
on under the best.
"""

from __future__ import annotations

import warnings

from .anneal import anneal
from .climb import climb
from .config import RUGGED
from .kicks import kicks
from .starts import POWERS, chosen, named, random_start
from .state import Run


def classic(run: Run) -> None:
    config, track = run.config, run.track
    screen = run.rung(config.screen)
    ends: list[float] = []  # each start's local optimum

    def climbed(mask, loss):
        return climb(run, mask, loss, screen=screen) if config.hill_climb else (mask, loss)

    for s in range(config.starts):
        run.phase(f"{'annealing, ' if config.iterations else ''}start {s + 1}/{config.starts}")
        if s == 0 and run.start is not None:
            first = chosen(run, run.check_start(run.start))
        elif s < len(config.start):
            name = config.start[s]
            first = chosen(run, named(run, name)[POWERS.index(2.0) if name == "warped" else 0])
        else:
            first = random_start(run)
        ends.append(climbed(*anneal(run, first, config.iterations))[1])
    rugged = len(ends) > 1 and 0 < min(ends) and max(ends) > RUGGED * min(ends)
    if rugged and not config.iterations and config.escalate:  # the starts disagree: anneal as well
        for s in range(config.starts):
            run.phase(f"rugged: annealing {s + 1}/{config.starts}")
            climbed(*anneal(run, track.best if s == 0 else random_start(run), config.escalate))
    if config.hill_climb and track.best is not None:
        run.phase("hill climbing")
        climbed(track.best, track.best_loss)
        kicks(run, config.kicks, climbed)
    if rugged and not (config.iterations or config.escalate):
        warnings.warn(
            f"budcache: the local search's {len(ends)} starts ended {max(ends) / min(ends):.3g}x apart: this "
            "objective is rugged and a local search may miss its best plan; compare with --effort local "
            "(which anneals then) or annealed",
            UserWarning,
            stacklevel=4,
        )
