"""Where did the model look? A relevance map over the film's patches for an answer, computed only when asked.

    maps = vqa.relevance(images, conversations, answers, models)     # one forward + one backward for every row
    maps[0].grid                                                     # (side, side), 24 x 24 for LLaVA-1.5-7B, max 1
    picture = overlay(film, maps[0].grid)                            # a heat overlay on the letterboxed film

The method is gradient-weighted attention relevancy (Chefer, Gur & Wolf, ICCV 2021, "Generic Attention-model
Explainability for Interpreting Bi-Modal and Encoder-Decoder Transformers", rules 5-6), the relevancy that Intel's
lvlm-interpret computes for LLaVA: the answer is teacher-forced after its prompt with eager attention; the target
is the sum of the logits of the answer's tokens (its end of sequence left out); one backward pass gives every
decoder layer's attention gradient; each layer's heads are combined as mean_h (grad ⊙ attention)^+ and the
relevance of each token to the answer is propagated as R ← R + Ā R from the last layer down, starting from the
positions that predict the answer's tokens. The map is R's image columns, on the vision tower's patch grid.

Why this and not the other two candidates:
- raw attention from the answer to the image (mean over layers and heads) is what LLaVA's visual attention sinks
  corrupt (Kang et al., ICLR 2025, "See What You Are Told: Visual Attention Sink in Large Multimodal Models"): a
  few image tokens with massive activations in fixed hidden dimensions draw attention whatever the question;
- attention rollout (Abnar & Zuidema 2020) multiplies those same attention matrices with the identity and is
  class-agnostic: the map would not change between "Is there an effusion?" and "Is there a pneumothorax?".
Weighting by the gradient keeps only attention that moves the answer. A sink's value vector is nearly zero (it is a
no-op for the output), so its attention gets almost no gradient; on top of that the sinks are found as Kang et al.
define them and left out of the map (their relevance set to 0, listed in `sinks`): a token is a visual sink when,
in some decoder layer, its activation in the first token's massive dimensions reaches `SINK_TAU` times its
root-mean-square (the first token's massive dimensions: where its own activation does; {1415, 2533} in LLaMA-2).
`RelevanceMap.attention` keeps the raw attention map beside the relevance for comparison.

Rows are independent (a row's map does not depend on the others in its batch), so every model of a mixed
base/adapter batch gets its map from the same forward and backward, with PEFT's `adapter_names` as in `generate`.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

ATTENTION = "cxr_vqa_relevance"  # the attention function registered with transformers while a map is computed
SINK_TAU = 20.0  # Kang et al.'s threshold on activation / RMS for a massive activation
_collector = threading.local()  # the layers' combined attention, of the call running in this thread


@dataclass(frozen=True)
class RelevanceMap:
    """An answer's relevance over the film's patches, row-major like the patches; values in [0, 1], peak 1 (all 0
    when nothing was relevant)."""

    grid: np.ndarray  # (side, side) float32: gradient-weighted relevancy, sinks set to 0
    attention: np.ndarray  # (side, side) float32: raw attention of the answer to each patch, for comparison
    sinks: tuple[int, ...]  # patches (flat, row-major) found to be visual attention sinks and left out of `grid`
    first_peak: float = 0.0  # the first token's largest activation / RMS over layers: sinks need it >= SINK_TAU

    @property
    def side(self) -> int:
        return self.grid.shape[0]

    def top(self, k: int = 1) -> list[int]:
        """The `k` most relevant patches (flat, row-major), most relevant first."""
        return [int(i) for i in np.argsort(-self.grid.ravel(), kind="stable")[:k]]


def grid_side(n_tokens: int) -> tuple[int, int]:
    """(side of the square patch grid, tokens before it): 576 → (24, 0); with CLIP's CLS kept, 577 → (24, 1)."""
    for skip in (0, 1):
        side = math.isqrt(n_tokens - skip)
        if side * side == n_tokens - skip:
            return side, skip
    raise ValueError(f"{n_tokens} image tokens do not form a square patch grid")


def normalise(values: np.ndarray) -> np.ndarray:
    """Clip at 0 and scale so the peak is 1 (float32); all zeros stay zeros."""
    values = np.clip(np.asarray(values, np.float32), 0, None)
    peak = values.max(initial=0.0)
    return values / peak if peak > 0 else values


def sink_tokens(
    hidden_states: Sequence[torch.Tensor], first: int, image: torch.Tensor, tau: float = SINK_TAU
) -> tuple[list[int], float]:
    """(indices into `image`, one row's image positions, of visual attention sinks; the first token's largest
    activation / RMS). A sink's activation, in the dimensions where the first token's is massive, reaches `tau` x
    its RMS in some layer (Kang et al. 2025). `hidden_states`: one row's (tokens, hidden) per layer, the embeddings
    first (left out: nothing is massive there yet)."""
    found, first_peak = torch.zeros(len(image), dtype=torch.bool), 0.0
    for states in hidden_states[1:]:
        states = states.float()
        ratio = states.abs() / states.pow(2).mean(-1, keepdim=True).sqrt().clamp_min(1e-12)
        first_peak = max(first_peak, float(ratio[first].max()))
        dims = ratio[first] >= tau
        if dims.any():
            found |= (ratio[image][:, dims].amax(-1) >= tau).cpu()
    return [int(i) for i in found.nonzero().flatten()], first_peak


def propagate(layers: Sequence[torch.Tensor], start: torch.Tensor) -> torch.Tensor:
    """Row `start` of R = (I + Ā_L) ... (I + Ā_1), Chefer et al.'s rule 6 applied from the last layer down: only
    the rows of the answer are needed, so this costs L vector-matrix products instead of L matrix products."""
    relevance = start
    for combined in reversed(layers):
        relevance = relevance + relevance @ combined
    return relevance


def _relevance_attention(module, query, key, value, attention_mask, scaling, dropout=0.0, **kwargs):
    """Eager attention that also hands the collector of this thread mean_h (grad ⊙ attention)^+ in the backward."""
    from transformers.models.llama.modeling_llama import eager_attention_forward

    output, weights = eager_attention_forward(module, query, key, value, attention_mask, scaling, dropout, **kwargs)
    collector = getattr(_collector, "layers", None)
    if collector is not None and weights.requires_grad:
        layer = module.layer_idx
        collector["attention"][layer] = weights.detach().float().mean(1)

        def combine(grad, weights=weights):  # reduced at once: the layer's gradient is never kept whole
            collector["relevance"][layer] = (grad.float() * weights.detach().float()).clamp_min(0).mean(1)

        weights.register_hook(combine)
    return output, weights


def _differentiable_4bit(model) -> None:
    """On CPUs with AVX512-BF16, bitsandbytes repacks 4-bit weights at their first forward in eval mode for an
    inference kernel that has no backward. Put them back in the layout its autograd path reads, as bitsandbytes does
    itself before saving or moving them; the next plain answer packs them again. GPUs never pack: nothing to do."""
    for module in model.modules():
        weight = getattr(module, "weight", None)
        state = getattr(weight, "quant_state", None)
        if getattr(state, "packing_format_for_cpu", False):
            from bitsandbytes.functional import _convert_weight_packed_for_cpu_inverse

            weight.data, weight.quant_state = _convert_weight_packed_for_cpu_inverse(weight.data, state)


@contextmanager
def _relevance_mode(model):
    """Eager attention with the collector in the language model and image features that take a gradient; the
    model's own attention (sdpa) back afterwards. The caller holds the model's lock: this changes shared state."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, eager_mask

    AttentionInterface.register(ATTENTION, _relevance_attention)
    # and eager's additive causal + padding mask: a name without a mask function gets no mask at all
    AttentionMaskInterface.register(ATTENTION, eager_mask)
    llava = model.get_base_model() if hasattr(model, "get_base_model") else model
    before = llava.config.text_config._attn_implementation
    leaves: list[torch.Tensor] = []

    def features(_module, _inputs, output):  # the backward stops here: the vision tower needs no gradient
        leaf = output.detach().requires_grad_(True)
        leaves.append(leaf)
        return leaf

    _differentiable_4bit(llava)
    # no weight takes a gradient (a base loaded without an adapter has trainable ones): autograd then keeps only what
    # the attention's gradients need, and nothing of the vision tower
    trainable = [p for p in llava.parameters() if p.requires_grad]
    for parameter in trainable:
        parameter.requires_grad_(False)
    hook = llava.model.multi_modal_projector.register_forward_hook(features)
    _collector.layers = {"attention": {}, "relevance": {}}
    try:
        llava.set_attn_implementation({"text_config": ATTENTION})
        yield _collector.layers, leaves
    finally:
        hook.remove()
        _collector.layers = None
        for parameter in trainable:
            parameter.requires_grad_(True)
        llava.set_attn_implementation({"text_config": before})


def explain(model, batch: dict, answer_tokens: Sequence[int], image_token_id: int) -> list[RelevanceMap]:
    """One RelevanceMap per row of `batch` (the processor's output for prompt + answer, left-padded, plus
    `adapter_names` for a mixed batch); row i ends with its answer: `answer_tokens[i]` tokens, end of sequence
    included."""
    ids, mask = batch["input_ids"], batch["attention_mask"]
    if not bool(mask[:, -1].all()):
        raise ValueError("rows must be left-padded: each ends with its answer")
    n = ids.shape[1]
    # positions as generate counts them (padding skipped), so each row sees what it saw when it answered
    positions = (mask.long().cumsum(-1) - 1).clamp_min(0)
    with _relevance_mode(model) as (layers, leaves), torch.inference_mode(False), torch.enable_grad():
        out = model(**batch, position_ids=positions, output_hidden_states=True, use_cache=False)
        starts = []
        target = out.logits.new_zeros(())
        for row, count in enumerate(answer_tokens):
            # position p predicts token p + 1; the end of sequence is a target only when the answer is empty
            predict = list(range(n - count - 1, n - 2)) or [n - 2]
            chosen = ids[row, [p + 1 for p in predict]]
            target = target + out.logits[row, predict].gather(-1, chosen[:, None]).float().sum()
            starts.append(predict)
        torch.autograd.grad(target, leaves)
    hidden = [h.detach() for h in out.hidden_states]
    del out
    depth = len(layers["relevance"])
    if depth != len(layers["attention"]) or depth == 0:
        raise RuntimeError("the language model's attention was not captured: is it a LLaVA with eager support?")
    maps = []
    for row, predict in enumerate(starts):
        image = (ids[row] == image_token_id).nonzero().flatten()
        side, skip = grid_side(len(image))
        image = image[skip:]
        start = torch.zeros(n, dtype=torch.float32, device=ids.device)
        start[predict] = 1.0 / len(predict)
        relevance = propagate([layers["relevance"][i][row] for i in range(depth)], start)[image]
        attention = torch.stack([layers["attention"][i][row][predict].mean(0) for i in range(depth)]).mean(0)
        first = int(mask[row].long().argmax())  # the first real token (BOS), past the left padding
        sinks, first_peak = sink_tokens([h[row] for h in hidden], first, image, SINK_TAU)
        relevance[sinks] = 0.0
        grid = normalise(relevance.cpu().numpy()).reshape(side, side)
        attention = normalise(attention[image].cpu().numpy()).reshape(side, side)
        maps.append(RelevanceMap(grid, attention, tuple(sinks), first_peak))
    return maps


def overlay(image: Image.Image, grid: np.ndarray, alpha: float = 0.5) -> Image.Image:
    """`grid` as a heat map over `image` (the letterboxed film), one block per patch: the map's own resolution,
    not smoothed into detail it does not have."""
    from matplotlib import colormaps

    heat = colormaps["inferno"](np.clip(grid, 0, 1))[..., :3]
    heat = Image.fromarray((heat * 255).astype(np.uint8)).resize(image.size, Image.Resampling.NEAREST)
    return Image.blend(image.convert("RGB"), heat, alpha)
