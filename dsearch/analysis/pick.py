"""Which trial of a study a command or `load_trial` means: 'best' or a trial number, checked."""
from __future__ import annotations

from collections.abc import Callable

import optuna

from ..errors import DsearchError
from .pareto import best_within_budget, study_budget, trained, trials_frame
from .verdict import study_verdict


def pick_trial(study: optuna.Study, trial: int | str = "best", *, flag: str = "trial",
               log: Callable[[str], None] | None = None) -> int:
    """'best' or a trial number of the study.

    'best' is the pick of the study's verdict (the finalist with the best full-schedule validation mean over its
    seeds, or the cheapest one statistically tied with it) when its finals have run; without a verdict, the
    trained trial within the budget with the highest proxy validation accuracy. A stored verdict that cannot be read
    is refused (one DsearchError line saying to rerun the finals or name a trial), never passed over for another
    trial: 'best' would silently mean something else than the verdict the user saw.

    `flag` names the argument in the error for anything else (the CLI's `--trial`); `log`, when given, hears
    which trial 'best' chose and why.
    """
    if trial == "best":
        verdict = study_verdict(study)
        if verdict is not None and verdict.get("pick") is not None:
            if log is not None:
                log(f"chose the verdict's pick: {verdict['sentences'][0]}")
            return int(verdict["pick"])
        frame = trials_frame(study)
        budget = study_budget(study)
        row = best_within_budget(frame, budget)
        if log is not None:
            n = len(trained(frame))
            log(f"chose trial {int(row['trial'])}: the highest validation accuracy ({row['val_acc']:.4f}) of {n} "
                f"trained trials within the budget ({budget.describe()}); {row['mflops']:.2f} MFLOPs, "
                f"{row['mparams']:.3f} M params; a single proxy training, without finals (no verdict on this study: "
                "`dsearch run` without --no-finals makes one)")
        return int(row["trial"])
    number: int | None = None
    if isinstance(trial, str):
        try:
            number = int(trial)
        except ValueError:
            number = None
    elif isinstance(trial, int) and not isinstance(trial, bool):
        number = trial
    if number is None:
        raise DsearchError(f"{flag} must be 'best' or a trial number, got {trial!r}")
    count = len(study.get_trials(deepcopy=False))
    if not 0 <= number < count:
        raise DsearchError(f"study '{study.study_name}' has no trial {number} (trials 0..{count - 1})")
    return number
