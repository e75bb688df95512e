"""The architecture search on Optuna: `spaces` (the YAML search spaces and sampling), `budget` (the budget and
the repair of an over-budget candidate), `config` (SearchConfig and its checks), `storage`, `record` (what
dsearch writes on trials and studies), `resume`, `weights` (kept weights as Optuna artifacts), `trials`
(reading a study's trials back), `objective` (one trial), `driver` (`run_search`) and `workers` (`--jobs N`).

Import from the modules: this package imports none of them, so e.g. `dsearch spaces` does not load Optuna.
"""
