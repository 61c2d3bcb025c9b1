"""QLoRA fine-tuning of LLaVA-1.5 on chest X-ray QA: TRL SFTTrainer, answer-only loss, YAML config + flags.

    # tiny smoke run on CPU (minutes): a random tiny checkpoint and a synthetic dataset
    python -m finetune.tiny_model runs/tiny-llava
    python -m dataprep.synthetic runs/synthetic-release --patients 40
    python -m dataprep --root runs/synthetic-release --out data/synthetic-qa --generator labels
    python -m finetune --config finetune/configs/tiny-cpu.yaml

    # the real recipe on one GPU (bf16 where supported, fp16 otherwise)
    python -m finetune --config finetune/configs/llava-1.5-7b-qlora.yaml --dataset data/chexpert-qa

    # several GPUs (DDP, one 4-bit copy per GPU)
    accelerate launch --config_file finetune/configs/accelerate-multi-gpu.yaml \\
        -m finetune --config finetune/configs/llava-1.5-7b-qlora.yaml --dataset data/chexpert-qa

    # several processes on CPU (DDP over gloo, as tests/test_ddp.py runs it)
    torchrun --nproc_per_node 2 -m finetune --config finetune/configs/tiny-cpu.yaml --per_device_train_batch_size 2

    # overrides, resume, merge
    python -m finetune --config CONFIG [--dataset DATA] [--model_name_or_path M] [--output_dir O] [--max_steps N]
        [--resume_from_checkpoint [PATH]] [--merge]

Flags override the YAML; a key that no option knows fails. Every option: `python -m finetune --help`.
Output (output_dir): adapter_model.safetensors + adapter_config.json, the processor with the project template,
README.md (model card), checkpoint-*/ for resuming, and merged/ with --merge.
"""

from __future__ import annotations

import logging
import time


def main(argv: list[str] | None = None) -> None:
    from cxr_vqa.cli import user_errors
    from finetune.config import parse_config
    from finetune.model_card import final_losses
    from finetune.train import train

    script_args, train_args = parse_config(argv, description=__doc__)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    with user_errors():
        wait_for(script_args.wait_for or [])
        start = time.time()
        trainer = train(script_args, train_args)
    close_process_group()

    if not trainer.is_world_process_zero():  # under DDP one summary is enough
        return
    losses = final_losses(trainer.state.log_history)
    print(f"\ntrained {trainer.state.global_step} steps in {time.time() - start:.0f} s")
    for name, value in losses.items():
        print(f"  {name}: {value:.4f}")
    print(f"adapter, processor and model card: {train_args.output_dir}")
    if script_args.merge:
        print(f"merged 16-bit model: {train_args.output_dir}/merged")
    print(f"try it: python app.py --base {script_args.model_name_or_path} --adapter {train_args.output_dir}")


def close_process_group() -> None:
    """Under torchrun, wait for every process to finish, then take down the process group. A process that exits with
    gloo's group still up can abort in its C++ teardown ("terminate called without an active exception", SIGABRT)
    while another process still uses the group, and the launcher then fails the whole run."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def wait_for(paths: list[str], every: float = 0.1) -> None:
    """Return once every file of `paths` exists (--wait_for)."""
    from pathlib import Path

    missing = [Path(p) for p in paths if not Path(p).exists()]
    if missing:
        logging.getLogger("finetune").info("waiting for %s", ", ".join(map(str, missing)))
    while missing:
        time.sleep(every)
        missing = [p for p in missing if not p.exists()]


if __name__ == "__main__":
    main()
