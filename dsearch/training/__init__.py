"""Training an architecture: `proxy` (the short proxy trainer and its settings), `fastpath` (the proxy's exact
cheaper forms of a built model), `native` (dsearch's own CPU kernels, csrc/), `failures` (a failed or diverged
training's reason) and `full` (the longer training of one chosen architecture).

Import from the modules: this package imports none of them, so loading one does not load the others.
"""
