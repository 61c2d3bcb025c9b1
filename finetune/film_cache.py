"""Training with a frozen vision tower, each film seen through it once: its features (and the row's tokens) are kept
from the first epoch that uses them, so later epochs run the language model alone.

    python -m finetune --config finetune/configs/tiny-synthetic.yaml ...   # cache_film_features: true
    python -m finetune --config finetune/configs/tiny-synthetic-base.yaml  # + shuffle_films: the demo's base

The tower is frozen (LLaVA trains the projector and the language model), so a film's tower output is the same in
every epoch; the projector, which is trained, runs on it at every step. The loss is taken at the answer positions
only: the logits of the other positions (most of a row: its image tokens and questions) are never computed.
`tests/test_film_cache.py` checks that the loss equals the model's own on the same batch.

The cache is RAM: one film's features per training row, its image tokens x the tower's width x 2 bytes (the tower
in bf16/fp16; 4 in fp32 on CPU), kept on the CPU for the whole run (`feature_bytes`; training logs the total). For
LLaVA-1.5-7B that is 576 x 1024 x 2 bytes = 1.2 MB a film, 1.2 GB per 1,000 films; the tiny demo model's 144 x 64 x
4 bytes are 37 kB. On CUDA the collator runs in the main process (`finetune.train.check_film_cache`).

With `shuffle_films`, row i is shown the film of another study (a fixed random permutation): the films then carry no
information about the answers, and the model learns the language of the answers and each question's prior, not to
read a film. That is how the demo's base learns to speak without learning to see.
"""

from __future__ import annotations

import torch

from cxr_vqa.errors import UserError
from finetune.collator import IGNORE_INDEX, AnswerOnlyCollator


def llava_parts(model):
    """(the LlavaModel under DDP's and PEFT's wrappers, the lm_head, as PEFT may have wrapped it)."""
    if isinstance(model, torch.nn.parallel.DistributedDataParallel):
        model = model.module
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    return inner.model, inner.lm_head


def check_frozen_tower(model) -> None:
    """The cache is only right for a tower nothing trains."""
    trained = [name for name, p in model.named_parameters() if p.requires_grad and "vision_tower" in name]
    if trained:
        raise UserError(
            f"cache_film_features needs a frozen vision tower, but {trained[0]} is trained (lora_target_modules or "
            "lora_modules_to_save reach the tower): set cache_film_features: false or leave the tower out"
        )


def feature_bytes(model) -> int:
    """Bytes of RAM one cached film takes: its image tokens x the vision tower's width x the tower's dtype."""
    llava, _ = llava_parts(model)
    config, tower = llava.config, llava.vision_tower
    tokens = (config.vision_config.image_size // config.vision_config.patch_size) ** 2
    tokens += config.vision_feature_select_strategy != "default"  # "full" keeps the CLS token
    return tokens * config.vision_config.hidden_size * next(tower.parameters()).element_size()


def tower_features(llava, pixel_values: torch.Tensor) -> torch.Tensor:
    """What `LlavaModel.get_image_features` hands its projector: one vision layer's states, CLS dropped under the
    "default" strategy (LLaVA-1.5's layer -2 and "default")."""
    config = llava.config
    if not isinstance(config.vision_feature_layer, int):
        raise UserError("cache_film_features supports one vision_feature_layer (LLaVA-1.5's -2), not a list")
    out = llava.vision_tower(pixel_values.to(llava.vision_tower.dtype), output_hidden_states=True, return_dict=True)
    states = out.hidden_states[config.vision_feature_layer]
    return states[:, 1:] if config.vision_feature_select_strategy == "default" else states


class FilmCacheCollator:
    """Collate rows given by index (`{"row": i}`): a row's tokens and its film's tower features are computed the first
    time it is drawn (decoding its film, the processor, the frozen tower) and kept; afterwards a batch is padding."""

    def __init__(self, dataset, processor, model, *, shuffle_seed: int | None = None):
        self.dataset, self.model = dataset, model
        self.collate = AnswerOnlyCollator(processor)
        self.pad_id = processor.tokenizer.pad_token_id
        self.tokens: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}  # row -> (input_ids, labels), unpadded
        self.features: dict[int, torch.Tensor] = {}  # row -> tower features of the film it is shown
        n = len(dataset)
        order = torch.arange(n)
        if shuffle_seed is not None and n > 1:  # one random cycle through every row: no row keeps its own film
            cycle = torch.randperm(n, generator=torch.Generator().manual_seed(shuffle_seed))
            order[cycle] = cycle.roll(-1)
        self.film_of = order.tolist()

    def _fill(self, rows: list[int]) -> None:
        """Tokens and film features of rows seen for the first time, in one collator call and one tower forward."""
        records = []
        for i in rows:
            row = self.dataset[i]
            if self.film_of[i] != i:
                row = {**row, "images": self.dataset[self.film_of[i]]["images"]}
            records.append(row)
        batch = self.collate(records)
        llava, _ = llava_parts(self.model)
        device = next(llava.vision_tower.parameters()).device
        with torch.no_grad():
            features = tower_features(llava, batch["pixel_values"].to(device)).cpu()
        for k, i in enumerate(rows):
            length = int(batch["attention_mask"][k].sum())  # right padding: the row is the first `length` tokens
            self.tokens[i] = (batch["input_ids"][k, :length].clone(), batch["labels"][k, :length].clone())
            self.features[i] = features[k].clone()

    def __call__(self, examples: list[dict]) -> dict:
        rows = [int(e["row"]) for e in examples]
        new = [i for i in dict.fromkeys(rows) if i not in self.tokens]
        if new:
            self._fill(new)
        width = max(len(self.tokens[i][0]) for i in rows)
        input_ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        labels = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for k, i in enumerate(rows):
            ids, lab = self.tokens[i]
            input_ids[k, : len(ids)], labels[k, : len(ids)], mask[k, : len(ids)] = ids, lab, 1
        features = torch.stack([self.features[i] for i in rows])
        return {"input_ids": input_ids, "attention_mask": mask, "labels": labels, "film_features": features}


def answer_loss(model, inputs: dict, num_items: int | torch.Tensor | None = None):
    """(loss, correct answer tokens, answer tokens) of a batch from `FilmCacheCollator`: the projector on the cached
    features, scattered into the image-token positions as LlavaModel does, the language model, then the lm_head at
    the answer positions only. The loss is summed over answer tokens and divided by `num_items` (the Trainer's
    count over the global batch) or, without it, by this batch's count. Under DDP the parts run past DDP's forward,
    whose hooks average the gradients between processes: `average_gradients` does it after the backward."""
    llava, lm_head = llava_parts(model)
    input_ids, labels = inputs["input_ids"], inputs["labels"]
    embeds = llava.get_input_embeddings()(input_ids)
    image = llava.multi_modal_projector(inputs["film_features"].to(embeds.dtype)).reshape(-1, embeds.shape[-1])
    slots = llava.get_placeholder_mask(input_ids, inputs_embeds=embeds, image_features=image)
    embeds = embeds.masked_scatter(slots, image)
    hidden = llava(inputs_embeds=embeds, attention_mask=inputs["attention_mask"], use_cache=False).last_hidden_state
    target = labels[:, 1:]  # position i predicts token i + 1
    answer = target != IGNORE_INDEX
    logits = lm_head(hidden[:, :-1][answer]).float()
    total = torch.nn.functional.cross_entropy(logits, target[answer], reduction="sum")
    count = answer.sum()
    loss = total / (torch.as_tensor(num_items) if num_items is not None else count).clamp(min=1)
    return loss, (logits.argmax(-1) == target[answer]).sum(), count


def average_gradients(model) -> None:
    """Average the trained parameters' gradients over the processes, in one all-reduce, as DDP would have: the loss of
    `answer_loss` never went through DDP's forward, so DDP's gradient hooks stayed off."""
    import torch.distributed as dist

    params = [p for p in model.parameters() if p.requires_grad]
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]  # the same shapes on every rank
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= dist.get_world_size()
    offset = 0
    for p, g in zip(params, grads, strict=True):
        p.grad = flat[offset : offset + g.numel()].view_as(g).clone()
        offset += g.numel()
