"""Stage 3b, drawings: `diagram` decides what is drawn (boxes, arrows, clusters), `drawing` writes
it with graphviz (or the autograd graph with torchviz), `mermaid` as a Mermaid flowchart.

`specc.draw(...)` is also this package called as a function (see specc._callable).
"""
from specc._callable import make_callable

make_callable(__name__)
