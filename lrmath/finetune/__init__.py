"""Fine-tuning the default encoder on real classification tasks, method by method.

The harness behind the model-level table of issue #15: all-MiniLM-L6-v2 (through
transformers) with a linear head on mean-pooled output, fine-tuned on ``mr-polarity``
(binary) and ``trec`` (6 coarse classes) by full fine-tuning, PEFT LoRA, lrmath's
RunLoRA-converted LoRA, LoTR, SparseGrad (+ LoRA on attention), MeProp and randomized
backprop, each at the same step budget with its learning rate chosen on validation
accuracy from a 3-value grid, then 3 seeds.

==================================  ===========================================================
:mod:`~lrmath.finetune.tasks`        ``load_task`` (seeded splits), ``Task``
:mod:`~lrmath.finetune.methods`      ``METHODS`` (name -> builder and learning-rate grid),
                                     ``build``, ``Classifier``, ``MePropLinear``
:mod:`~lrmath.finetune.train`        ``run_one``, ``time_steps``, ``run_table`` (resumable),
                                     ``Settings``, memory measurement helpers
==================================  ===========================================================

CLI: ``lrmath finetune --task mr-polarity --method sparsegrad``; the whole table is the
benchmark ``python -m benchmarks finetune``. Importing this package does not import torch.
"""

from __future__ import annotations

from .methods import METHODS
from .tasks import TASKS, Task, load_task

__all__ = ["METHODS", "TASKS", "Task", "load_task", "run_one", "run_table", "Settings"]


def __getattr__(name):
    if name in ("run_one", "run_table", "Settings", "time_steps", "summarise", "RunCache", "load_encoder", "tiny_encoder"):
        from . import train

        return getattr(train, name)
    raise AttributeError(f"module 'lrmath.finetune' has no attribute {name!r}")
