"""RunLoRA: every LoRA forward/backward graph, an exact cost model and a planner (arXiv 2312.03415)."""

from .chain import ChainOrder, best_order, matmul_flops, orders

__all__ = ["ChainOrder", "best_order", "matmul_flops", "orders"]
