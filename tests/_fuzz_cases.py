"""Targets of the fuzz suite: every public callable of lrmath with one valid call each.

:func:`public_callables` walks ``lrmath`` and its subpackages and collects every name in
every ``__all__`` (so modules merged later are covered without an edit here). Each target
gets a *valid* base call from :data:`CASES` when one is written below, or else one built
from its signature by :func:`heuristic_call` (parameter names and annotations); the fuzz
tests then replace one argument at a time with a hostile value.

:data:`SKIP` lists what cannot be fuzzed generically, each with the reason.
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import os
import pkgutil
import tempfile

import numpy as np

import lrmath

# --------------------------------------------------------------------------- skip list
# qualified name -> why it is not fuzzed generically. Prefixes end with '.'.
SKIP = {
    "lrmath.cli.main": "the CLI is fuzzed command by command in tests/test_cli_errors.py",
    "lrmath.cli.Context": "CLI plumbing, fuzzed through the CLI",
    "lrmath.registry.": "decorators that mutate the global command registry; fuzzing would register junk commands",
    "lrmath.__main__": "runs the CLI on import",
    "lrmath.data.load_model": "loads the 22M-parameter default model (seconds per call)",
    "lrmath.data.encode": "runs the default model",
    "lrmath.data.capture_linears": "trains the default model for a step",
    "lrmath.data.task_batch": "tokenises with the default model's tokenizer and builds batches (slow)",
    "lrmath.data.classification_data": "encodes a whole data set with the default model",
    "lrmath.data.loss": "needs a model and batch from the skipped loaders",
    "lrmath.data.load_minilm": "loads the 22M-parameter default model through transformers (seconds per call)",
    "lrmath.data.load_smollm2": "fetches (93 MB, network on first use) and converts a 135M-parameter model",
    "lrmath.data.lee_news": "fetches a pinned package on first use (network); argument errors are tested in tests/test_data_fetch.py",
    "lrmath.data.stsb": "fetches a pinned package on first use (network); argument errors are tested in tests/test_data_fetch.py",
    "lrmath.data.mr_polarity": "fetches a pinned package on first use (network); argument errors are tested in tests/test_data_fetch.py",
    "lrmath.data.trec": "fetches a pinned package on first use (network); argument errors are tested in tests/test_data_fetch.py",
    "lrmath.data.fetch": "downloads from the package registry (network); its offline errors are tested in its own file",
    "lrmath.runlora.autotune.tune": "measures wall-clock time over many graphs (slow, nondeterministic)",
    "lrmath.runlora.autotune.measure_pair": "measures wall-clock time (slow, nondeterministic)",
    "lrmath.torch.MiniLM": "builds the full default architecture (seconds)",
    "lrmath.torch.RunLoRAPeftLinear": "a mixin installed by convert_peft, not constructed by users",
    "lrmath.torch.runlora.RunLoRAPeftLinear": "a mixin installed by convert_peft, not constructed by users",
    "lrmath.backend.available_backends": "probes every installed library (slow; takes no input)",
    "lrmath.backend.public": "the boundary decorator itself (it wraps any callable it is given)",
    "lrmath.backend.as_lrmath_error": "the boundary's exception translator (maps any exception object)",
    "lrmath.runlora.execute_torch.TorchOps": "executor inside the RunLoRA autograd Function (hot path traced by torch.compile); the layers validate its inputs",
    "lrmath.runlora.execute_torch.run_program": "executor inside the RunLoRA autograd Function (hot path traced by torch.compile); the layers validate its inputs",
    "lrmath.torch.kashin_hook": "a DDP communication hook: needs an initialised process group and a GradBucket (tests/test_torch_distributed.py runs it in 2 processes)",
    "lrmath.torch.kashin_comm.kashin_hook": "a DDP communication hook: needs an initialised process group and a GradBucket (tests/test_torch_distributed.py runs it in 2 processes)",
    "lrmath.torch.sparsegrad_mlp": "needs warm-up gradients of a model (covered by tests/test_sparsegrad_torch.py)",
}

# Result records: dataclasses the library builds and returns. Their constructors do not
# validate (they are not entry points for user data), so they are not fuzzed.
RECORD_TYPES_OK = True

# Functions whose job is to pass values through unchanged (conversion, validation with
# finite=False, assertion helpers): a NaN in their output is not a silent NaN.
NAN_PASSTHROUGH = {
    "lrmath.backend.to_numpy", "lrmath.backend.convert", "lrmath.backend.like", "lrmath.backend.as_compute",
    "lrmath.backend.restore", "lrmath.backend.array_namespace", "lrmath.backend.check_array",
    "lrmath.backend.finite_or_raise", "lrmath.backend.check_float", "lrmath.backend.compute_dtype",
    "lrmath.testing.eps", "lrmath.testing.tolerance", "lrmath.testing.z_limit", "lrmath.testing.z_score",
}

# Functions whose contract is to raise AssertionError on a failed check.
ASSERTIONS = {"lrmath.testing.assert_close", "lrmath.testing.assert_z"}


def _skipped(qual: str) -> str | None:
    for k, why in SKIP.items():
        if qual == k or qual.startswith(k if k.endswith(".") else k + "."):
            return why
    return None


def public_callables() -> list[tuple[str, object]]:
    """``[(qualified name, object)]`` for every callable named in a public ``__all__`` of lrmath.

    Names re-exported by several modules are listed once (first by module order).
    Result records (dataclasses) and exception classes are left out; skipped names too.
    """
    mods = ["lrmath.backend", "lrmath.ops", "lrmath.rng", "lrmath.testing"]
    for info in pkgutil.walk_packages(lrmath.__path__, "lrmath."):
        parts = info.name.split(".")
        if any(p.startswith("_") for p in parts[1:]):
            continue
        mods.append(info.name)
    seen, out = set(), []
    for m in sorted(set(mods), key=lambda s: (s.count("."), s)):
        if _skipped(m + "."):
            continue
        try:
            mod = importlib.import_module(m)
        except Exception as exc:  # a module that does not import is a bug the fuzz test reports
            out.append((m, exc))
            continue
        for name in getattr(mod, "__all__", ()):
            obj = getattr(mod, name, None)
            qual = f"{m}.{name}"
            if obj is None or not callable(obj) or id(obj) in seen:
                continue
            if inspect.isclass(obj) and (issubclass(obj, BaseException) or dataclasses.is_dataclass(obj)):
                continue
            if inspect.ismodule(obj):
                continue
            seen.add(id(obj))
            if _skipped(qual):
                continue
            out.append((qual, obj))
    return out


# --------------------------------------------------------------------------- valid inputs
def _rng(seed=0):
    return np.random.default_rng(seed)


def mat(*shape, seed=0, dtype=np.float64):
    return _rng(seed).standard_normal(shape).astype(dtype)


_TMP = tempfile.mkdtemp(prefix="lrmath-fuzz-")


def tmp_file(name="f.bin", data=b"\x00" * 16) -> str:
    p = os.path.join(_TMP, name)
    with open(p, "wb") as fh:
        fh.write(data)
    return p


def _kashin_file():
    from lrmath import kashin

    p = os.path.join(_TMP, "q.safetensors")
    if not os.path.exists(p):
        kashin.quantize(mat(8, 32), 2, block=32).save(p, "w")
    return p


def _grad_vector():
    import torch

    return torch.linspace(-1.0, 1.0, 300)


def _kashin_payload():
    from lrmath.torch.kashin_comm import encode

    return encode(_grad_vector(), bits=2)


def _torch_model():
    import torch

    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(16, 8), torch.nn.ReLU(), torch.nn.Linear(8, 16))


def _peft_model():
    import peft
    import torch

    class M(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.q = torch.nn.Linear(16, 8)

        def forward(self, x):
            return self.q(x)

    torch.manual_seed(0)
    return peft.get_peft_model(M(), peft.LoraConfig(r=2, target_modules=["q"]))


def _graphs():
    from lrmath import runlora

    sp = runlora.graph_space()
    return sp, runlora.peft_pair(sp)


def _lora_inputs():
    return {"X": mat(5, 6), "W": mat(6, 4, seed=1), "A": mat(6, 2, seed=2), "B": mat(2, 4, seed=3)}


def _stats():
    from lrmath import randmm

    return randmm.stats(mat(16, 5), mat(16, 6, seed=1))


def _sg():
    from lrmath import sparsegrad

    U, V = sparsegrad.basis("hadamard", 8), sparsegrad.basis("dct", 6)
    return U, V


def _quantized():
    from lrmath import kashin

    return kashin.quantize(mat(8, 32), 2, block=32)


def _lotr_layer():
    from lrmath.torch import LoTR

    return LoTR(16, 8, 2, 2)


# qualified name -> () -> (args, kwargs). Each is one valid call.
CASES = {
    "lrmath.backend.array_namespace": lambda: ((mat(3, 4),), {}),
    "lrmath.backend.convert": lambda: ((mat(3, 4), "numpy"), {}),
    "lrmath.backend.like": lambda: ((mat(3, 4), mat(2, 2)), {}),
    "lrmath.backend.restore": lambda: ((np, mat(3, 4), np.float32), {}),
    "lrmath.backend.compute_dtype": lambda: ((np, np.float16), {}),
    "lrmath.backend.check_array": lambda: ((mat(3, 4), "x"), {"ndim": 2}),
    "lrmath.backend.check_positive_int": lambda: ((3, "n"), {}),
    "lrmath.backend.check_int": lambda: ((3, "n"), {"minimum": 0}),
    "lrmath.backend.check_float": lambda: ((0.5, "f"), {"minimum": 0.0}),
    "lrmath.backend.check_bool": lambda: ((True, "flag"), {}),
    "lrmath.backend.check_choice": lambda: (("a", "c", ("a", "b")), {}),
    "lrmath.backend.check_axis": lambda: ((1, 2), {}),
    "lrmath.backend.check_size": lambda: (((4, 4),), {}),
    "lrmath.backend.check_path": lambda: ((tmp_file(),), {}),
    "lrmath.backend.require_module": lambda: (("numpy",), {}),
    "lrmath.backend.finite_or_raise": lambda: ((mat(3, 4),), {}),
    "lrmath.ops.OrthogonalOperator": lambda: (("hadamard", 8), {}),
    "lrmath.ops.orthogonal": lambda: (("dct", 12), {"seed": 1}),
    "lrmath.ops.kron": lambda: ((lrmath.ops.orthogonal("hadamard", 4), lrmath.ops.orthogonal("dct", 3)), {}),
    "lrmath.ops.fwht": lambda: ((mat(3, 8),), {}),
    "lrmath.ops.dct2": lambda: ((mat(3, 7),), {}),
    "lrmath.ops.idct2": lambda: ((mat(3, 7),), {}),
    "lrmath.rng.stream_key": lambda: ((1, 2), {}),
    "lrmath.rng.random_bits": lambda: ((1, 2, (3, 5)), {}),
    "lrmath.rng.uniform": lambda: ((1, 2, (3, 5)), {}),
    "lrmath.rng.signs": lambda: ((1, 2, 7), {}),
    "lrmath.rng.integers": lambda: ((1, 2, (3, 5), 10), {}),
    "lrmath.rng.normal": lambda: ((1, 2, (3, 5)), {}),
    "lrmath.testing.eps": lambda: ((np.float32,), {}),
    "lrmath.testing.tolerance": lambda: ((np.float32, 16), {}),
    "lrmath.testing.assert_close": lambda: ((mat(3, 4), mat(3, 4)), {}),
    "lrmath.testing.z_limit": lambda: ((3,), {}),
    "lrmath.testing.z_score": lambda: ((1.0, 0.9, 0.1), {}),
    "lrmath.testing.assert_z": lambda: ((0.5,), {}),
    "lrmath.data.config": lambda: ((), {}),
    "lrmath.data.load_weights": lambda: ((["embeddings.LayerNorm.weight"],), {}),
    "lrmath.data.tokenize": lambda: ((["a short sentence"],), {"max_length": 8}),
    "lrmath.data.text_pairs": lambda: ((), {"seed": 1}),
    # kashin
    "lrmath.kashin.decompose": lambda: ((mat(4, 32),), {"seed": 1}),
    "lrmath.kashin.quantize": lambda: ((mat(8, 32), 2), {"block": 32}),
    "lrmath.kashin.KashinQuantized": None,  # built by quantize/load; fuzzed through load
    "lrmath.kashin.KashinQuantized.load": lambda: ((_kashin_file(), "w"), {}),
    "lrmath.kashin.load": lambda: ((_kashin_file(), "w"), {}),
    "lrmath.kashin.load_entries": lambda: ((_kashin_file(),), {}),
    "lrmath.kashin.split_bits": lambda: ((3,), {}),
    "lrmath.kashin.lloyd_max": lambda: ((mat(500), 4), {"iters": 5}),
    "lrmath.kashin.rtn_quantize": lambda: ((mat(8, 64), 2, 32), {}),
    "lrmath.kashin.hqq_quantize": lambda: ((mat(8, 64), 2, 32), {}),
    "lrmath.kashin.decompose.as_operator": lambda: (("hadamard", 16), {}),
    "lrmath.kashin.format.pack_codes": lambda: ((np.arange(20, dtype=np.uint8) % 4, 2), {}),
    "lrmath.kashin.format.unpack_codes": lambda: ((np.arange(5, dtype=np.uint8), 2, 20), {}),
    "lrmath.kashin.format.entry_checksum": lambda: (({"a": mat(3)},), {}),
    "lrmath.kashin.format.write_checkpoint": lambda: ((os.path.join(_TMP, "w.safetensors"), {}), {"plain": {"a": mat(3)}}),
    "lrmath.kashin.format.read_header": lambda: ((_kashin_file(),), {}),
    "lrmath.kashin.format.atomic_write": lambda: ((os.path.join(_TMP, "a.bin"), lambda p: open(p, "wb").close()), {}),
    "lrmath.kashin.quantize.nearest_code": lambda: ((mat(20), np.array([-1.0, 0.0, 1.0])), {}),
    # lotr
    "lrmath.lotr.tucker2": lambda: ((mat(3, 8, 6), 2), {"max_iter": 3}),
    "lrmath.lotr.hosvd2": lambda: ((mat(3, 8, 6), 2), {}),
    "lrmath.lotr.reconstruct": lambda: ((mat(8, 2), mat(3, 2, 2, seed=1), mat(6, 2, seed=2)), {}),
    "lrmath.lotr.relative_error": lambda: ((mat(3, 8, 6), mat(3, 8, 6, seed=1)), {}),
    "lrmath.lotr.check_ranks": lambda: ((2, (3, 8, 6)), {}),
    "lrmath.lotr.lora_params": lambda: ((8, 6, 2, 3), {}),
    "lrmath.lotr.lotr_params": lambda: ((8, 6, 2, 3), {}),
    "lrmath.lotr.lora_rank_for_budget": lambda: ((200, 8, 6, 3), {}),
    "lrmath.lotr.lotr_rank_for_budget": lambda: ((200, 8, 6, 3), {}),
    "lrmath.lotr.matched_lora_rank": lambda: ((2, 8, 6, 3), {}),
    "lrmath.lotr.svd_errors": lambda: ((mat(3, 8, 6),), {}),
    "lrmath.lotr.pooled_svd_error": lambda: ((np.abs(mat(3, 6)), 2), {}),
    "lrmath.lotr.compare": lambda: ((mat(3, 8, 6), [1, 2]), {"max_iter": 3}),
    "lrmath.lotr.plan": lambda: ((16, 8, 6, 2, 3), {}),
    "lrmath.lotr.forward": lambda: ((mat(3, 5, 8), mat(8, 2, seed=1), mat(3, 2, 2, seed=2), mat(6, 2, seed=3)), {}),
    "lrmath.lotr.backward": lambda: ((mat(3, 5, 6), mat(3, 5, 8, seed=4), mat(8, 2, seed=1), mat(3, 2, 2, seed=2), mat(6, 2, seed=3)), {}),
    "lrmath.lotr.adapter.chain_orders": lambda: (((2, 3, 4, 5),), {}),
    # randmm
    "lrmath.randmm.make_sketch": lambda: (("gaussian", 16, 4), {}),
    "lrmath.randmm.estimate": lambda: ((mat(16, 5), mat(16, 6, seed=1), 4), {}),
    "lrmath.randmm.sampling_probabilities": lambda: ((mat(16, 5), mat(16, 6, seed=1)), {}),
    "lrmath.randmm.bernoulli_probabilities": lambda: ((np.abs(mat(16)) + 0.1, 4.0), {}),
    "lrmath.randmm.optimal_probabilities": lambda: ((mat(16, 5), mat(16, 6, seed=1)), {}),
    "lrmath.randmm.stats": lambda: ((mat(16, 5), mat(16, 6, seed=1)), {}),
    "lrmath.randmm.variance": lambda: ((mat(16, 5), mat(16, 6, seed=1), 4), {}),
    "lrmath.randmm.optimal_bernoulli_variance": lambda: ((_stats(), 4.0), {}),
    "lrmath.randmm.transform_row_moment": lambda: (("gaussian", _stats()), {}),
    "lrmath.randmm.wta_variances": lambda: ((np.full(16, 1 / 16), 4, mat(16, 5), mat(16, 6, seed=1)), {}),
    "lrmath.randmm.wta_deterministic_size": lambda: ((np.full(16, 1 / 16), 4), {"X": mat(16, 5), "Y": mat(16, 6, seed=1)}),
    "lrmath.randmm.per_example_gradients": lambda: ((mat(16, 5), mat(16, 6, seed=1), 4), {}),
    "lrmath.randmm.sgd_variance": lambda: ((mat(4, 5, 6), 2), {}),
    "lrmath.randmm.compare": lambda: ((mat(16, 5), mat(16, 6, seed=1), 1.0), {"ratios": (0.5,)}),
    "lrmath.randmm.max_compression": lambda: ((mat(16, 5), mat(16, 6, seed=1), 1.0), {}),
    "lrmath.randmm.Sketch": None,
    "lrmath.randmm.estimators.check_k": lambda: ((4, 16), {}),
    "lrmath.randmm.variance.crs_variance": lambda: ((_stats(), np.full(16, 1 / 16), 4), {}),
    "lrmath.randmm.variance.bernoulli_variance": lambda: ((_stats(), np.full(16, 0.25)), {}),
    # runlora
    "lrmath.runlora.best_order": lambda: (([2, 3, 4, 5],), {}),
    "lrmath.runlora.matmul_flops": lambda: ((2, 3, 4), {}),
    "lrmath.runlora.num_orders": lambda: ((4,), {}),
    "lrmath.runlora.orders": lambda: (([2, 3, 4, 5],), {}),
    "lrmath.runlora.Poly": None,
    "lrmath.runlora.graph_space": lambda: ((), {"dropout": True}),
    "lrmath.runlora.run_forward": lambda: ((_graphs()[1][0], _lora_inputs(), 0.5), {}),
    "lrmath.runlora.run_backward": lambda: ((_graphs()[1][1], {**_lora_inputs(), "dY": mat(5, 4, seed=5)}, {}, 0.5), {}),
    "lrmath.runlora.run_pair": lambda: ((*_graphs()[1], {**_lora_inputs(), "dY": mat(5, 4, seed=5)}, 0.5), {}),
    "lrmath.runlora.CountingOps": lambda: ((lrmath.runlora.execute.ArrayOps(np, 0.5),), {}),
    "lrmath.runlora.plan": lambda: ((64, 32, 4), {"tokens": 128}),
    "lrmath.runlora.paper_graphs": lambda: ((_graphs()[0], "forward1", "backward1"), {}),
    "lrmath.runlora.peft_pair": lambda: ((_graphs()[0],), {}),
    "lrmath.runlora.autotune.cache_path": lambda: ((), {}),
    "lrmath.runlora.execute.ArrayOps": lambda: ((np, 0.5), {}),
    "lrmath.runlora.plan.itemsize_of": lambda: (("float16",), {}),
    "lrmath.runlora.execute_torch.TorchOps": None,
    "lrmath.runlora.execute_torch.run_program": None,
    "lrmath.runlora.execute_torch.live_steps": lambda: ((_graphs()[1][0], ("Y",)), {}),
    # sparsegrad
    "lrmath.sparsegrad.basis": lambda: (("hadamard", 8), {}),
    "lrmath.sparsegrad.LearnedBasis": lambda: ((np.eye(6),), {}),
    "lrmath.sparsegrad.GramAccumulator": lambda: ((8, 6), {}),
    "lrmath.sparsegrad.learned_bases": lambda: (([mat(8, 6), mat(8, 6, seed=1)],), {}),
    "lrmath.sparsegrad.columns": lambda: ((_sg()[0], np.array([0, 3])), {}),
    "lrmath.sparsegrad.transform": lambda: ((mat(8, 6), *_sg()), {}),
    "lrmath.sparsegrad.inverse_transform": lambda: ((mat(8, 6), *_sg()), {}),
    "lrmath.sparsegrad.energy_curve": lambda: ((mat(8, 6),), {}),
    "lrmath.sparsegrad.energy_at_density": lambda: ((mat(8, 6), 0.1), {}),
    "lrmath.sparsegrad.density_for_energy": lambda: ((mat(8, 6), 0.9), {}),
    "lrmath.sparsegrad.magnitude_quantiles": lambda: ((mat(8, 6),), {}),
    "lrmath.sparsegrad.compare_bases": lambda: (([mat(8, 6), mat(8, 6, seed=1)],), {"density": 0.1}),
    "lrmath.sparsegrad.k_for_density": lambda: (((8, 6), 0.1), {}),
    "lrmath.sparsegrad.topk_global": lambda: ((mat(8, 6), 5), {}),
    "lrmath.sparsegrad.topk_per_row": lambda: ((mat(8, 6), 2), {}),
    "lrmath.sparsegrad.threshold_select": lambda: ((mat(8, 6), 0.5), {}),
    "lrmath.sparsegrad.IndexSelector": lambda: (((8, 6), 0.1), {}),
    "lrmath.sparsegrad.carry_over": lambda: ((mat(3), np.array([1, 4, 9]), np.array([4, 5, 9])), {}),
    "lrmath.sparsegrad.sampled_product": lambda: ((mat(8, 5), mat(5, 6, seed=1), np.array([0, 7, 20, 47])), {"shape": (8, 6)}),
    "lrmath.sparsegrad.sparse_gradient": lambda: ((mat(5, 8), mat(5, 6, seed=1), *_sg(), np.array([0, 7, 20, 47])), {}),
    "lrmath.sparsegrad.topk_product": lambda: ((mat(8, 5), mat(5, 6, seed=1), 4), {}),
    "lrmath.sparsegrad.to_sparse": lambda: ((mat(3), np.array([0, 7, 20]), (8, 6)), {}),
    "lrmath.sparsegrad.route_cost": lambda: ((5, np.array([0, 7, 20]), (8, 6)), {}),
    "lrmath.sparsegrad.select.topk_of_values": lambda: ((np.array([0, 7, 20]), mat(3), 2), {}),
    "lrmath.sparsegrad.select.check_indices": lambda: ((np.array([0, 7, 20]), (8, 6)), {}),
    # torch
    "lrmath.torch.LoRALinear": lambda: ((16, 8, 2), {}),
    "lrmath.torch.convert_peft": lambda: ((_peft_model(),), {}),
    "lrmath.torch.LoTR": lambda: ((16, 8, 2, 2), {}),
    "lrmath.torch.apply_lotr": lambda: ((_torch_model(), "0"), {"rank": 2}),
    "lrmath.torch.SparseGradLinear": None,
    "lrmath.torch.RandomizedLinear": lambda: ((16, 8), {}),
    "lrmath.torch.randomize": lambda: ((_torch_model(),), {}),
    "lrmath.torch.KashinLinear": lambda: ((_quantized(),), {}),
    "lrmath.torch.KashinHookState": lambda: ((), {"bits": 2}),
    "lrmath.torch.kashin_comm.KashinHookState": lambda: ((), {"bits": 2}),
    "lrmath.torch.kashin_comm.encode": lambda: ((_grad_vector(),), {"bits": 2}),
    "lrmath.torch.kashin_comm.decode": lambda: ((_kashin_payload(), 300), {"bits": 2}),
    "lrmath.torch.kashin_comm.payload_bytes": lambda: ((300,), {"bits": 2}),
    "lrmath.torch.kashin_comm.ring_bytes": lambda: (("all_gather", 1000, 2), {}),
    "lrmath.torch.quantize_model": lambda: ((_torch_model(),), {"exclude": ()}),
    "lrmath.torch.kashin.load_quantized": None,
    "lrmath.torch.kashin.save_quantized": None,
    "lrmath.torch.lotr.LoTRLinear": None,
    "lrmath.torch.lotr.merge_lotr": None,
    "lrmath.torch.lotr.lotr_parameters": None,
    "lrmath.torch.model.mean_pool": None,
    "lrmath.torch.runlora.lora_function": None,
}


def _torch_cases():
    import torch

    def t(*shape, seed=0):
        g = torch.Generator().manual_seed(seed)
        return torch.randn(*shape, generator=g)

    return {
        "lrmath.torch.model.mean_pool": lambda: ((t(2, 5, 8), torch.ones(2, 5, dtype=torch.long)), {}),
        "lrmath.torch.runlora.lora_function": lambda: ((t(5, 16), t(8, 16, seed=1), None, t(2, 16, seed=2), t(8, 2, seed=3), 0.5), {}),
        "lrmath.torch.lotr.lotr_parameters": lambda: ((_torch_model(),), {}),
        "lrmath.torch.lotr.merge_lotr": lambda: ((_torch_model(),), {}),
        "lrmath.torch.kashin.save_quantized": lambda: ((_torch_model(), os.path.join(_TMP, "m.safetensors")), {}),
        "lrmath.torch.lotr.LoTRLinear": lambda: ((torch.nn.Linear(16, 8), _lotr_layer(), 0), {}),
    }


def _heuristic_value(p: inspect.Parameter):
    name, ann = p.name.lower(), str(p.annotation)
    if name in ("seed", "stream", "offset"):
        return 0
    if name in ("path", "file", "filename", "out", "output") or "PathLike" in ann:
        return tmp_file()
    if "bool" in ann:
        return False
    if "float" in ann and "int" not in ann:
        return 0.5
    if "int" in ann or name in ("n", "m", "t", "k", "r", "l", "rank", "bits", "block", "group", "steps"):
        return 4
    if ann == "str" or "str" == ann.strip("'"):
        return "x"
    return mat(8, 8)


def heuristic_call(obj):
    """A base call for a target without a written case: required parameters from their names."""
    args, kwargs = [], {}
    try:
        sig = inspect.signature(obj)
    except (TypeError, ValueError):
        return (), {}
    for p in sig.parameters.values():
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD) or p.default is not p.empty:
            continue
        v = _heuristic_value(p)
        if p.kind == p.KEYWORD_ONLY:
            kwargs[p.name] = v
        else:
            args.append(v)
    return tuple(args), kwargs


def base_call(qual: str, obj):
    """``(args, kwargs)`` of a valid call of ``obj``, or ``None`` when it has no generic case."""
    if qual.startswith("lrmath.torch."):
        tc = _torch_cases()
        if qual in tc:
            return tc[qual]()
    if qual in CASES:
        f = CASES[qual]
        return None if f is None else f()
    return heuristic_call(obj)


def parameters(obj) -> list[inspect.Parameter]:
    """The parameters a fuzz test may replace (not ``*args``/``**kwargs``)."""
    try:
        sig = inspect.signature(obj)
    except (TypeError, ValueError):
        return []
    return [p for p in sig.parameters.values() if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD) and p.name != "self"]


def replace_arg(obj, args, kwargs, param: inspect.Parameter, value):
    """The call ``(args, kwargs)`` with ``param`` set to ``value``."""
    args, kwargs = list(args), dict(kwargs)
    names = [p.name for p in parameters(obj)]
    if param.kind == param.POSITIONAL_ONLY or (param.kind == param.POSITIONAL_OR_KEYWORD and names.index(param.name) < len(args)):
        i = names.index(param.name)
        if i < len(args):
            args[i] = value
            return tuple(args), kwargs
    kwargs[param.name] = value
    return tuple(args), kwargs


# --------------------------------------------------------------------------- methods
def _op():
    return lrmath.ops.orthogonal("rdct", 12, seed=1)


def _torch_layers():
    import torch

    from lrmath.torch import KashinLinear, LoRALinear, RandomizedLinear

    torch.manual_seed(0)
    return {"LoRALinear": LoRALinear(16, 8, 2), "RandomizedLinear": RandomizedLinear(16, 8),
            "KashinLinear": KashinLinear(_quantized())}


# qualified name -> () -> (bound method, args, kwargs): entry points reached through objects
METHOD_CASES = {
    "lrmath.ops.OrthogonalOperator.apply": lambda: (_op().apply, (mat(3, 12),), {"axis": -1}),
    "lrmath.ops.OrthogonalOperator.apply_t": lambda: (_op().apply_t, (mat(12, 3),), {"axis": 0}),
    "lrmath.kashin.KashinQuantized.linear": lambda: (_quantized().linear, (mat(3, 32),), {}),
    "lrmath.kashin.KashinQuantized.matmul": lambda: (_quantized().matmul, (mat(32, 3),), {}),
    "lrmath.kashin.KashinQuantized.rmatmul": lambda: (_quantized().rmatmul, (mat(3, 8),), {}),
    "lrmath.kashin.KashinQuantized.dequantize": lambda: (_quantized().dequantize, (), {"dtype": np.float32}),
    "lrmath.kashin.KashinQuantized.relative_error": lambda: (_quantized().relative_error, (mat(8, 32),), {}),
    "lrmath.kashin.KashinQuantized.save": lambda: (_quantized().save, (os.path.join(_TMP, "s.safetensors"),), {"name": "w"}),
    "lrmath.sparsegrad.GramAccumulator.update": lambda: (lrmath.sparsegrad.GramAccumulator(8, 6).update, (mat(8, 6),), {}),
    "lrmath.sparsegrad.GramAccumulator.update_factors": lambda: (lrmath.sparsegrad.GramAccumulator(8, 6).update_factors, (mat(5, 8), mat(5, 6, seed=1)), {}),
    "lrmath.sparsegrad.IndexSelector.update": lambda: (lrmath.sparsegrad.IndexSelector((8, 6), 0.1).update, (mat(8, 6),), {}),
    "lrmath.runlora.Plan.select": lambda: (lrmath.runlora.plan(64, 32, 4).select, (100,), {}),
    "lrmath.runlora.Choice.at": lambda: (lrmath.runlora.plan(64, 32, 4).choice.at, (100, 64, 32, 4), {}),
}


def _torch_method_cases():
    import torch

    def fwd(name):
        return lambda: (_torch_layers()[name], (torch.randn(3, 16),), {})

    return {f"lrmath.torch.{n}.forward": fwd(n) for n in ("LoRALinear", "RandomizedLinear", "KashinLinear")}


def method_targets():
    """``[(qualified name, factory)]`` of the method entry points fuzzed besides the functions."""
    out = sorted(METHOD_CASES.items())
    try:
        out += sorted(_torch_method_cases().items())
    except ImportError:  # pragma: no cover - torch is part of the test extra
        pass
    return out
