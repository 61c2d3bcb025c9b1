"""The core of the project: the one place that knows the model (loading, 4-bit, the chat template, prompts, adapters,
batched generation) and the films it reads (PNG/JPEG/DICOM, letterboxed), plus what the parts above it share (the
dataset contract, the evaluation report's format, the one config parser and error type). `dataprep/`, `finetune/`,
`evaluation/` and the app sit on top of it side by side. Importing it loads no model and needs neither Gradio nor TRL.

    from cxr_vqa.model import load_model
    vqa = load_model("llava-hf/llava-1.5-7b-hf", adapter="runs/llava-cxr")     # 4-bit nf4 by default
    film = vqa.prepare_film("film.dcm")                                        # letterboxed to the model's input
    answers = vqa.compare(film.image, vqa.conversation(None, "Is there cardiomegaly?"))   # {"base": .., "tuned": ..}
    lineup = Lineup(vqa, [RemoteModel(parse_remote("gpt4o=https://api.openai.com/v1#gpt-4o"))])  # + remote models
"""
