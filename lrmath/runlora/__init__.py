"""RunLoRA: every LoRA forward/backward graph, an exact cost model and a planner.

Reference: Cherniuk, Mikhalev, Oseledets, "Run LoRA Run: Faster and Lighter LoRA
Implementations", arXiv 2312.03415.  Math layout: ``X`` (t, m), ``W`` (m, n), ``A`` (m, r),
``B`` (r, n), ``Y = X W + s (X A) B + b``.  The torch layers (PEFT layout) live in
:mod:`lrmath.torch.runlora`.

>>> from lrmath.runlora import plan
>>> p = plan(4096, 4096, 8)          # every token count; exact breakpoints
>>> c = p.select(2048)              # the pair at t = 2048 and its costs there (numbers)
>>> c.flops, c.saved_bytes, c.bytes_moved  # doctest: +SKIP
>>> c.poly.flops                    # the closed form in t, m, n, r  # doctest: +SKIP
"""

from .chain import ChainOrder, best_order, matmul_flops, num_orders, orders
from .costs import Poly
from .execute import CountingOps, run_backward, run_forward, run_pair
from .graphs import PAPER_BACKWARD, PAPER_FORWARD, PEFT, Graph, GraphSpace, graph_space
from .plan import Choice, Plan, Selection, paper_graphs, peft_pair, plan

__all__ = [
    "ChainOrder", "best_order", "matmul_flops", "num_orders", "orders",
    "Poly", "Graph", "GraphSpace", "graph_space", "PAPER_FORWARD", "PAPER_BACKWARD", "PEFT",
    "CountingOps", "run_forward", "run_backward", "run_pair",
    "Plan", "Choice", "Selection", "plan", "paper_graphs", "peft_pair",
]
