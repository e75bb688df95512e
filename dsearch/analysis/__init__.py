"""Reading a finished or running study: `pareto` (the trials as a DataFrame, non-dominated sets, hypervolume),
`pick` (which trial 'best' means), `rank` (rank agreement statistics), `baselines` (MobileNetV2 and its conv
swaps within the study's budget), `audit` (the proxy's rank agreement with full training) and `dashboard`.

Import from the modules: this package imports none of them, so reading a frame does not load Plotly.
"""
