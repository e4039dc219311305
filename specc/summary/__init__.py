"""Stage 3a, summaries: `rows` are the records, `spec_rows` / `module_rows` collect them from a
spec or any nn.Module, `summarize` nests and totals them, `render` formats them.

`specc.summary(...)` is also this package called as a function (see specc._callable).
"""
from specc._callable import make_callable

make_callable(__name__)
