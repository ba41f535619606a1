"""What the audit knows about aten ops, by name: which compute an error the Bio-SSL
conditions exclude (ii), which use a weight against its forward direction (iii), which
compute batch statistics, and which only read their operands' shapes."""
from __future__ import annotations

from torch import Tensor

SOFTMAX = {"_softmax", "_log_softmax", "_softmax_backward_data", "_log_softmax_backward_data",
           "logsumexp", "softmax", "log_softmax"}
"""Softmax / log-sum-exp (cross-entropy over scores: InfoNCE, NT-Xent)."""
NORMALISATION = {"linalg_vector_norm", "norm", "rsqrt", "sqrt", "var", "std", "var_mean", "std_mean",
                 "native_batch_norm_backward", "batch_norm_backward", "cudnn_batch_norm_backward",
                 "miopen_batch_norm_backward", "native_layer_norm_backward", "native_group_norm_backward"}
"""Norms and the backward passes of normalisation layers."""
DIVISION = {"div", "div_", "reciprocal", "true_divide", "floor_divide"}
"""Division: flagged when the divisor is a tensor the step computed (an activity), not a constant."""
MATMUL = {"mm", "bmm", "addmm", "baddbmm", "addbmm", "_addmm_activation", "mv", "addmv", "dot", "vdot"}
"""Products that sum over an axis of both operands."""
CONV_BACKWARD = {"convolution_backward"}
BATCH_STATS = {"native_batch_norm", "_native_batch_norm_legit", "_native_batch_norm_legit_functional",
               "_native_batch_norm_legit_no_training", "cudnn_batch_norm", "miopen_batch_norm",
               "_batch_norm_with_update", "_batch_norm_impl_index", "batch_norm"}
"""Ops that normalise with statistics over the batch (in training mode)."""
SHAPE_ONLY_PREFIXES = ("new_", "empty", "zeros", "ones", "full", "rand", "scalar_tensor", "arange", "eye")
"""Ops whose result depends on their operands' shape and dtype only (``zeros_like``, ``new_empty``)."""


def op_name(func) -> str:
    return func._overloadpacket.__name__


def shape_only(name: str) -> bool:
    return name.endswith("_like") or name.startswith(SHAPE_ONLY_PREFIXES)


def error_flag(name: str, divisor_computed: bool) -> str | None:
    """Condition (ii)'s name for what the op does, when it is one it excludes."""
    if name in SOFTMAX:
        return "softmax"
    if name in NORMALISATION:
        return "normalisation"
    if name in DIVISION and divisor_computed:
        return "division"
    return None


def divisor(name: str, args) -> Tensor | None:
    """The divisor of a division op when it is a tensor (scalars arrive as Python numbers)."""
    if name in ("div", "div_", "true_divide", "floor_divide") and len(args) > 1 and isinstance(args[1], Tensor):
        return args[1]
    if name == "reciprocal" and args and isinstance(args[0], Tensor):
        return args[0]
    return None


def batch_stats(name: str, args) -> bool:
    """A batch-normalisation op computing statistics over the batch (training mode)."""
    if name not in BATCH_STATS:
        return False
    if name == "_native_batch_norm_legit_no_training":
        return False
    if name in ("native_batch_norm", "_native_batch_norm_legit", "_native_batch_norm_legit_functional",
                "cudnn_batch_norm", "miopen_batch_norm", "batch_norm", "_batch_norm_impl_index"):
        flags = [a for a in args[3:] if isinstance(a, bool)]
        return flags[0] if flags else True
    return True


def weight_operands(name: str, args, flipped) -> list[tuple[int, str]]:
    """(index into args, how) of the operands an op uses against the forward direction
    of the weight they hold, and of operands used element-wise (any direction).

    ``flipped(t)``: whether the weight copy ``t`` has its last two axes swapped. A weight W
    (out × in) maps x to W x: a product contracting W's *input* axis is a forward use; one
    contracting its *output* axis (Wᵀ δ) is a transposed use. A convolution uses W forward,
    a transposed convolution and the input gradient of ``convolution_backward`` transposed.
    """
    if name in ("mm", "bmm", "mv", "dot", "vdot"):
        first, second = 0, 1
    elif name in ("addmm", "baddbmm", "addbmm", "_addmm_activation", "addmv"):
        first, second = 1, 2
    elif name == "convolution":
        return [(1, "transposed convolution")] if args[6] else []
    elif name == "convolution_backward":
        mask = args[10]
        return [(2, "input gradient of a convolution")] if mask[0] and not args[7] else (
            [(2, "input gradient of a transposed convolution")] if mask[0] else [])
    else:
        return [(i, "element-wise") for i, a in enumerate(args) if isinstance(a, Tensor)]
    out = []
    if name in ("dot", "vdot"):
        return [(first, "inner product"), (second, "inner product")]
    # operand a (…, n, k) contracts its last axis; b (…, k, m) its second-to-last
    if isinstance(args[first], Tensor) and args[first].dim() >= 2 and flipped(args[first]):
        out.append((first, f"{name} with Wᵀ"))
    if name not in ("mv", "addmv") and isinstance(args[second], Tensor) and args[second].dim() >= 2 \
            and not flipped(args[second]):
        out.append((second, f"{name} with Wᵀ"))
    return out


def output_operands(name: str, args, out_index: int) -> list[int] | None:
    """For multi-output ops whose outputs depend on different operands: the operand indices
    output ``out_index`` depends on (None: all of them)."""
    if name in CONV_BACKWARD:  # (grad_output, input, weight) → (grad_input, grad_weight, grad_bias)
        return [[0, 2], [0, 1], [0]][out_index]
    return None
