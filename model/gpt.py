"""The GPT: a pre-norm decoder with multi-query attention, RoPE, QK-norm, squared-ReLU MLP and soft-capped logits.

Architecture (flax NNX), for a ModelConfig `cfg`:

    x = rms_norm(embed(tokens))                       # parameter-free norm on the embedding
    for block in blocks:                              # cfg.n_layer times
        x = x + attn(rms_norm(x))                     # causal multi-query attention
        x = x + mlp(rms_norm(x))                      # relu(x @ up)**2 @ down
    logits = softcap * tanh(head(rms_norm(x)) / softcap)

No biases and no norm parameters anywhere. Parameter tree (`nnx.state(model, nnx.Param)`), with
shapes for D = d_model, V = vocab_size, H = head_dim, N = n_head, K = n_kv_head, M = mlp_ratio * D:

    embed/embedding             (V, D)   token embedding          -> Adam
    blocks/<i>/attn/q/kernel    (D, N*H) query projection         -> Muon
    blocks/<i>/attn/k/kernel    (D, K*H) shared key projection    -> Muon
    blocks/<i>/attn/v/kernel    (D, K*H) shared value projection  -> Muon
    blocks/<i>/attn/out/kernel  (N*H, D) attention output         -> Muon
    blocks/<i>/mlp/up/kernel    (D, M)                            -> Muon
    blocks/<i>/mlp/down/kernel  (M, D)                            -> Muon
    head/kernel                 (D, V)   untied output head       -> Adam

The first path element `embed` / `head` is what an optimizer keys on to send those two matrices
to Adam; every other parameter is a 2-D block matrix.

Precision: parameters are float32. Matmul inputs and the activations inside a block are in
cfg.compute_dtype; the residual stream, every RMSNorm, RoPE, the attention softmax (inside
jax.nn.dot_product_attention), the logits and the loss are float32.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

from planck.model.config import ModelConfig
from planck.model import attention as folded
from planck.model.matmul import dense

RMS_EPS = 1e-6

# One layer's keys and values, each (B, S, n_kv_head, head_dim).
LayerCache = tuple[jax.Array, jax.Array]

# std 1/sqrt(fan_in), drawn uniformly: the bound is sqrt(3 / fan_in).
_UNIFORM_FAN_IN = nnx.initializers.variance_scaling(1.0, "fan_in", "uniform")
_ZEROS = nnx.initializers.zeros_init()


def original_init(key: jax.Array, shape: tuple[int, ...], dtype=jnp.float32) -> jax.Array:
    """The original PlanckGPT's kernel init: normal, std 1/sqrt(fan_in) * min(1, sqrt(fan_out / fan_in)) for (fan_in, fan_out)."""
    fan_in, fan_out = shape
    # Narrow outputs (the shared K/V projection: 768 -> 128) start smaller; square and wide ones at 1/sqrt(fan_in).
    std = min(1.0, math.sqrt(fan_out / fan_in)) / math.sqrt(fan_in)
    return jax.random.normal(key, shape, dtype) * std


def kernel_init(cfg: ModelConfig):
    """The initializer of q, k, v and up for cfg.init (out and down always start at zero)."""
    return original_init if cfg.init == "original" else _UNIFORM_FAN_IN


def head_init(cfg: ModelConfig):
    """The output head's initializer: normal with cfg.head_init_std, or zeros when it is 0 (the original's)."""
    return nnx.initializers.normal(stddev=cfg.head_init_std) if cfg.head_init_std > 0 else _ZEROS


def rms_norm(x: jax.Array) -> jax.Array:
    """Parameter-free RMSNorm over the last axis, computed in float32, returned in x's dtype."""
    x32 = x.astype(jnp.float32)
    y = x32 * jax.lax.rsqrt(jnp.mean(jnp.square(x32), axis=-1, keepdims=True) + RMS_EPS)
    return y.astype(x.dtype)


def rope(x_BxTxHxD: jax.Array, positions_BxT: jax.Array, base: float) -> jax.Array:
    """Rotary position embedding, rotate-half layout: dim i pairs with dim i + D/2; float32 in and out.

    positions_BxT may have batch 1 (training: every row at 0..T-1) or one row per sequence (decoding).
    """
    half = x_BxTxHxD.shape[-1] // 2
    inv_freq_F = base ** (-jnp.arange(half, dtype=jnp.float32) / half)
    angle_BxTxF = positions_BxT.astype(jnp.float32)[..., None] * inv_freq_F
    cos = jnp.cos(angle_BxTxF)[:, :, None, :]  # broadcast over heads
    sin = jnp.sin(angle_BxTxF)[:, :, None, :]
    x1, x2 = x_BxTxHxD[..., :half], x_BxTxHxD[..., half:]
    return jnp.concatenate([x1 * cos + x2 * sin, x2 * cos - x1 * sin], axis=-1)


def attention_implementation(dtype: jnp.dtype) -> str:
    """"cudnn" (flash attention) on GPU with 16-bit compute, else "xla" (cudnn refuses float32 and CPU)."""
    if jax.default_backend() == "gpu" and jnp.dtype(dtype) in (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16)):
        return "cudnn"
    return "xla"


def _linear(d_in: int, d_out: int, init, dtype, rngs: nnx.Rngs) -> nnx.Linear:
    return nnx.Linear(d_in, d_out, use_bias=False, dtype=dtype, param_dtype=jnp.float32, kernel_init=init, rngs=rngs)


class Attention(nnx.Module):
    """Causal multi-query attention: n_head query heads share n_kv_head K/V heads; RoPE, then QK RMSNorm."""

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        # Plain hashable settings, not the (mutable, unhashable) config: they become part of the graphdef.
        self.n_head, self.n_kv_head, self.head_dim = cfg.n_head, cfg.n_kv_head, cfg.head_dim
        self.rope_base = float(cfg.rope_base)
        self.compute_dtype = dt = jnp.dtype(cfg.compute_dtype)
        d, hd, init = cfg.d_model, cfg.head_dim, kernel_init(cfg)
        self.q = _linear(d, cfg.n_head * hd, init, dt, rngs)
        self.k = _linear(d, cfg.n_kv_head * hd, init, dt, rngs)
        self.v = _linear(d, cfg.n_kv_head * hd, init, dt, rngs)
        # Zero output projection: each block starts as the identity on the residual stream.
        self.out = _linear(cfg.n_head * hd, d, _ZEROS, dt, rngs)

    def __call__(
        self, x_BxTxD: jax.Array, positions_BxT: jax.Array, cache: LayerCache | None = None
    ) -> tuple[jax.Array, LayerCache]:
        """Attention output and this layer's keys/values.

        cache None: causal self-attention over x (training, and the prefill of a prompt); returns
        x's own keys and values. cache (k, v) of shape (B, S, K, H): each row of x holds new tokens
        at positions_BxT; their keys/values are written into the cache at those positions and each
        query attends to every cached position up to its own; returns the updated cache.
        """
        dt = self.compute_dtype
        B, T, _ = x_BxTxD.shape
        q_BxTxNxH = dense(self.q, x_BxTxD).reshape(B, T, self.n_head, self.head_dim)
        k_BxTxKxH = dense(self.k, x_BxTxD).reshape(B, T, self.n_kv_head, self.head_dim)
        v_BxTxKxH = dense(self.v, x_BxTxD).reshape(B, T, self.n_kv_head, self.head_dim).astype(dt)
        # RoPE, then QK-norm (nanochat's order). A rotation keeps each head vector's length, so with
        # a parameter-free norm both orders give the same q and k (tests check this); we keep
        # nanochat's so the two models read alike. Both run in float32, then cast once.
        q_BxTxNxH = rms_norm(rope(q_BxTxNxH.astype(jnp.float32), positions_BxT, self.rope_base)).astype(dt)
        k_BxTxKxH = rms_norm(rope(k_BxTxKxH.astype(jnp.float32), positions_BxT, self.rope_base)).astype(dt)
        if cache is None and folded.use_folded_attention():
            # XLA:CPU: the query heads folded into rows, batched row-major matmuls (model/attention.py).
            y_BxTxNxH = folded.causal_attention(q_BxTxNxH, k_BxTxKxH, v_BxTxKxH)
            new_cache = (k_BxTxKxH, v_BxTxKxH)
        elif cache is None:
            # K/V with fewer heads are broadcast over the query groups inside the call, never repeated.
            y_BxTxNxH = jax.nn.dot_product_attention(
                q_BxTxNxH, k_BxTxKxH, v_BxTxKxH, is_causal=True, implementation=attention_implementation(dt)
            )
            new_cache = (k_BxTxKxH, v_BxTxKxH)
        else:
            cache_k_BxSxKxH, cache_v_BxSxKxH = cache
            rows_Bx1 = jnp.arange(B)[:, None]
            cache_k_BxSxKxH = cache_k_BxSxKxH.at[rows_Bx1, positions_BxT].set(k_BxTxKxH.astype(cache_k_BxSxKxH.dtype))
            cache_v_BxSxKxH = cache_v_BxSxKxH.at[rows_Bx1, positions_BxT].set(v_BxTxKxH.astype(cache_v_BxSxKxH.dtype))
            # An explicit mask from positions: is_causal would align a lone query with key 0.
            S = cache_k_BxSxKxH.shape[1]
            mask_Bx1xTxS = jnp.arange(S)[None, None, None, :] <= positions_BxT[:, None, :, None]
            y_BxTxNxH = jax.nn.dot_product_attention(
                q_BxTxNxH, cache_k_BxSxKxH.astype(dt), cache_v_BxSxKxH.astype(dt), mask=mask_Bx1xTxS
            )
            new_cache = (cache_k_BxSxKxH, cache_v_BxSxKxH)
        return dense(self.out, y_BxTxNxH.reshape(B, T, self.n_head * self.head_dim)), new_cache


class MLP(nnx.Module):
    """Two bias-free linears with a squared ReLU between them."""

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        dt = jnp.dtype(cfg.compute_dtype)
        hidden = cfg.mlp_ratio * cfg.d_model
        self.up = _linear(cfg.d_model, hidden, kernel_init(cfg), dt, rngs)
        self.down = _linear(hidden, cfg.d_model, _ZEROS, dt, rngs)

    def __call__(self, x_BxTxD: jax.Array) -> jax.Array:
        return dense(self.down, jnp.square(jax.nn.relu(dense(self.up, x_BxTxD))))


class Block(nnx.Module):
    """Pre-norm residual block: x + attn(norm(x)), then x + mlp(norm(x)); the residual stays float32."""

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        self.compute_dtype = jnp.dtype(cfg.compute_dtype)
        self.attn = Attention(cfg, rngs=rngs)
        self.mlp = MLP(cfg, rngs=rngs)

    def __call__(
        self, x_BxTxD: jax.Array, positions_BxT: jax.Array, cache: LayerCache | None = None
    ) -> tuple[jax.Array, LayerCache]:
        # Adding in float32 keeps small updates from being rounded away in a bf16 residual stream.
        attn_BxTxD, new_cache = self.attn(rms_norm(x_BxTxD).astype(self.compute_dtype), positions_BxT, cache)
        x_BxTxD = x_BxTxD + attn_BxTxD.astype(jnp.float32)
        x_BxTxD = x_BxTxD + self.mlp(rms_norm(x_BxTxD).astype(self.compute_dtype)).astype(jnp.float32)
        return x_BxTxD, new_cache


def _block_forward(block: Block, x_BxTxD: jax.Array, positions_BxT: jax.Array) -> jax.Array:
    return block(x_BxTxD, positions_BxT)[0]


# Recomputes each block's activations in the backward pass instead of storing them.
_block_forward_remat = nnx.remat(_block_forward)


class GPT(nnx.Module):
    """The language model: int32 tokens (B, T) -> float32 soft-capped logits (B, T, vocab_size)."""

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        self.compute_dtype = jnp.dtype(cfg.compute_dtype)
        self.logit_softcap = float(cfg.logit_softcap)
        self.remat = bool(cfg.remat)
        self.embed = nnx.Embed(
            cfg.vocab_size, cfg.d_model, param_dtype=jnp.float32,
            embedding_init=nnx.initializers.normal(stddev=1.0), rngs=rngs,
        )
        self.blocks = nnx.List([Block(cfg, rngs=rngs) for _ in range(cfg.n_layer)])
        # A tiny (or zero) head: the initial logits are near zero, so the initial loss is near ln(vocab).
        self.head = nnx.Linear(
            cfg.d_model, cfg.vocab_size, use_bias=False, dtype=self.compute_dtype,
            param_dtype=jnp.float32, kernel_init=head_init(cfg),
            preferred_element_type=jnp.float32,  # 16-bit inputs, float32 accumulation and logits
            rngs=rngs,
        )

    def __call__(self, tokens_BxT: jax.Array) -> jax.Array:
        return self._logits(self._blocks(tokens_BxT))

    def final_hidden(self, tokens_BxT: jax.Array) -> jax.Array:
        """rms_norm of the last block's output in the compute dtype: the head's input (B, T, D) (the loss starts here)."""
        return rms_norm(self._blocks(tokens_BxT)).astype(self.compute_dtype)

    def _blocks(self, tokens_BxT: jax.Array) -> jax.Array:
        T = tokens_BxT.shape[1]
        positions_1xT = jnp.arange(T)[None, :]
        x_BxTxD = self._embed(tokens_BxT)
        forward = _block_forward_remat if self.remat else _block_forward
        for block in self.blocks:
            x_BxTxD = forward(block, x_BxTxD, positions_1xT)
        return x_BxTxD

    def forward_cached(
        self, tokens_BxT: jax.Array, positions_BxT: jax.Array, caches: list[LayerCache] | None = None
    ) -> tuple[jax.Array, list[LayerCache]]:
        """Logits and per-layer keys/values, for inference (see Attention.__call__ for the two cache modes)."""
        x_BxTxD = self._embed(tokens_BxT)
        new_caches = []
        for i, block in enumerate(self.blocks):
            x_BxTxD, layer_cache = block(x_BxTxD, positions_BxT, None if caches is None else caches[i])
            new_caches.append(layer_cache)
        return self._logits(x_BxTxD), new_caches

    def _embed(self, tokens_BxT: jax.Array) -> jax.Array:
        return rms_norm(self.embed(tokens_BxT).astype(jnp.float32))

    def _logits(self, x_BxTxD: jax.Array) -> jax.Array:
        logits_BxTxV = self.head(rms_norm(x_BxTxD).astype(self.compute_dtype)).astype(jnp.float32)
        cap = jnp.float32(self.logit_softcap)
        return cap * jnp.tanh(logits_BxTxV / cap)


def count_params(model: nnx.Module) -> int:
    """Number of elements in all nnx.Param variables (works on nnx.eval_shape models too)."""
    leaves = jax.tree_util.tree_leaves(nnx.state(model, nnx.Param))
    return sum(math.prod(leaf.shape) for leaf in leaves)


def param_count_formula(cfg: ModelConfig) -> int:
    """Expected parameter count from the config alone: embedding + head + n_layer blocks."""
    d, hd = cfg.d_model, cfg.head_dim
    attn = d * cfg.n_head * hd + 2 * d * cfg.n_kv_head * hd + cfg.n_head * hd * d
    mlp = 2 * d * cfg.mlp_ratio * d
    return 2 * cfg.vocab_size * d + cfg.n_layer * (attn + mlp)


def flops_per_token(cfg: ModelConfig) -> float:
    """Training FLOPs per token: 6 * (block params + head params) + 12 * n_layer * n_head * head_dim * seq_len.

    The first term is forward (2 per multiply-add) plus backward (4) for every matmul weight; the
    embedding is a lookup, not a matmul, so it is left out. The second counts the attention scores
    (QK^T) and the weighted sum of values over the full seq_len context, forward and backward, as
    PaLM and nanochat do: causal masking halves the useful work but it is counted in full, so MFU
    figures stay comparable with theirs.
    """
    non_embedding = param_count_formula(cfg) - cfg.vocab_size * cfg.d_model  # blocks + head
    attention = 12 * cfg.n_layer * cfg.n_head * cfg.head_dim * cfg.seq_len
    return float(6 * non_embedding + attention)
