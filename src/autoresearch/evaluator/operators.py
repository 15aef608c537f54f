"""Which ATen operators a handed-over graph may call: an explicit list, by name.

"Any ATen operator whose schema is not marked mutable" is not a safe rule: some operators write in
place without saying so (`native_batch_norm`'s running statistics, `_copy_from`, the `_fused_*` and
`_foreach_*` families), some build views of memory their tensor does not own (`_reshape_alias` and
`as_strided` with an arbitrary size and stride, `set_`), some turn data into Python numbers that can
then steer addresses (`_local_scalar_dense`), and allocations like `empty` hand out what the evaluator
freed. Each was shown to break the evaluation (a graph that keeps state across calls and so fools the
causality probe; reads and writes outside a tensor's storage). So the evaluator runs only what
torch.export emits for ordinary models: math, reductions, normalisation, attention, shape changes
checked against the storage, indexing checked against bounds, creation of filled tensors, sampling.
"""

from __future__ import annotations

ELEMENTWISE = """
abs acos acosh add addcdiv addcmul asin asinh atan atan2 atanh bitwise_and bitwise_not bitwise_or
bitwise_xor __and__ __or__ __xor__ ceil clamp clamp_max clamp_min clip cos cosh div elu eq erf erfc exp
exp2 expm1 floor floor_divide fmod frac ge gelu gt hardsigmoid hardswish hardtanh isfinite isinf isnan le
leaky_relu lerp log log10 log1p log2 logical_and logical_not logical_or logical_xor logit lt masked_fill
maximum minimum mish mul nan_to_num ne neg pow reciprocal relu relu6 remainder round rsqrt rsub selu
sigmoid sign silu sin sinh softplus sqrt square sub tan tanh true_divide trunc where xlogy
"""
REDUCTIONS = """
all amax amin any argmax argmin cumsum cumprod logsumexp max mean min norm linalg_vector_norm prod std
std_mean sum var var_mean softmax _softmax log_softmax _log_softmax topk sort argsort
"""
LAYERS = """
embedding linear matmul mm bmm addmm baddbmm einsum outer dot rms_norm layer_norm native_layer_norm
group_norm native_group_norm _native_batch_norm_legit_no_training scaled_dot_product_attention
_scaled_dot_product_flash_attention _scaled_dot_product_efficient_attention
_scaled_dot_product_cudnn_attention _scaled_dot_product_flash_attention_for_cpu
dropout native_dropout conv1d conv2d convolution one_hot pad constant_pad_nd glu
"""
SHAPES = """
view reshape transpose t permute unsqueeze squeeze expand expand_as slice select narrow flatten unflatten
split split_with_sizes chunk unbind tensor_split cat stack contiguous clone alias detach view_as movedim
roll flip repeat repeat_interleave tile tril triu index_select gather index scatter scatter_add
scatter_reduce index_put take_along_dim sym_size sym_numel _assert_tensor_metadata lift_fresh_copy to
_to_copy type_as copy
"""
CREATION = """
zeros ones full zeros_like ones_like full_like new_zeros new_ones new_full arange linspace scalar_tensor
eye fill rand randn randint rand_like randn_like randint_like bernoulli multinomial
"""
ALLOWED = frozenset(" ".join((ELEMENTWISE, REDUCTIONS, LAYERS, SHAPES, CREATION)).split())
