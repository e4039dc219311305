"""Stage 3c, training: `sources` read data, `data` shapes, splits and batches it, `metrics` and
`optim` turn `train:` names into objects, `prepare` assembles a `session.Session`, `loop` runs its
epochs, `run_log` reports them, `ranks` is what torchrun processes share, `training` /
`evaluation` are the API, and `launch` starts several processes (above `training`).

`specc.train(...)` is also this package called as a function (see specc._callable).
"""
from specc._callable import make_callable

make_callable(__name__)
