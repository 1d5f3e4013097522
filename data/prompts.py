"""VLM-R1's prompt templates and the conversion of a data row into chat messages.

REC: the question is followed by VLM-R1's instruction to think, then answer in JSON. OVD: an
R1-style system text (think, then answer) is prepended, and the question is used as written.
QA (VLM-R1's other tasks: math, multiple choice, yes/no, numbers, GUI; answers that are not
boxes): VLM-R1's default template, think, then answer.
"""
from __future__ import annotations

REC_TEMPLATE = ("{Question} First output the thinking process in <think> </think> tags and then output "
                "the final answer in <answer> </answer> tags. Output the final answer in JSON format.")
R1_SYSTEM = ("A conversation between User and Assistant. The user asks a question, and the Assistant solves it. "
             "The assistant first thinks about the reasoning process in the mind and then provides the user "
             "with the answer. The reasoning process and answer are enclosed within <think> </think> and "
             "<answer> </answer> tags, respectively, i.e., <think> reasoning process here </think>"
             "<answer> answer here </answer>")
QA_TEMPLATE = ("{Question} First output the thinking process in <think> </think> tags and then output "
               "the final answer in <answer> </answer> tags.")
TEMPLATES = {"rec": REC_TEMPLATE, "ovd": "{Question}", "qa": QA_TEMPLATE}
SYSTEMS = {"rec": None, "ovd": R1_SYSTEM, "qa": None}


def messages(question: str, n_images: int, task: str) -> list[dict]:
    """Chat messages for a question with ``n_images`` images (``<image>`` markers removed)."""
    if task not in TEMPLATES:
        raise ValueError(f"unknown task {task!r}; use one of {sorted(TEMPLATES)}")
    text = TEMPLATES[task].format(Question=question.replace("<image>", "").strip())
    content = [{"type": "image"} for _ in range(n_images)] + [{"type": "text", "text": text}]
    out = [{"role": "system", "content": SYSTEMS[task]}] if SYSTEMS[task] else []
    return out + [{"role": "user", "content": content}]


def prompt_text(processor, question: str, n_images: int, task: str) -> str:
    """The chat-templated prompt, generation prompt included: what the engines and the learner both read."""
    return processor.apply_chat_template(messages(question, n_images, task), add_generation_prompt=True,
                                         tokenize=False)


def prompt_inputs(processor, question: str, image_paths, task: str):
    """The processor's tensors for one prompt (``input_ids`` ``[1, P]``, pixel values, grids): the
    images opened as the engines open them, so the ids are the ones an engine generates from."""
    from data.images import open_rgb
    images = [open_rgb(str(path)) for path in image_paths]
    return processor(text=[prompt_text(processor, question, len(images), task)], images=images or None,
                     return_tensors="pt")


# The chat template of the embedded tiny model: Qwen2-VL's layout (a default system message,
# <|im_start|>role ... <|im_end|>, images as <|vision_start|><|image_pad|><|vision_end|>).
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif part['type'] == 'video' %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<|im_end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def _expression(question: str) -> str:
    """The referring expression of a REC question (the text after the last ': ')."""
    tail = question.rsplit(": ", 1)[-1].strip()
    return tail[:-1] if tail.endswith(".") else tail


def _scale(box, size, input_size) -> list[int]:
    (w, h), (iw, ih) = size, input_size
    return [round(box[0] * iw / w), round(box[1] * ih / h), round(box[2] * iw / w), round(box[3] * ih / h)]


def sft_answer(task: str, question: str, solution: str, image_size, input_size) -> str:
    """The supervised target for a row: think, then answer in the format the rewards check, with
    boxes in the pixels of the image the model sees (rewards rescale them back to the original).

    >>> sft_answer("rec", "...describes: the red circle.", "[10, 20, 30, 40]", (100, 100), (112, 112))
    '<think>The target is the red circle.</think><answer>{"bbox_2d": [11, 22, 34, 45]}</answer>'
    """
    import json
    if task == "qa":
        from rewards.answers import ground_truth
        return f"<think>I look at the image.</think><answer>{ground_truth(solution)}</answer>"
    if task == "rec":
        box = _scale(json.loads(solution), image_size, input_size)
        return f'<think>The target is {_expression(question)}.</think><answer>{{"bbox_2d": {json.dumps(box)}}}</answer>'
    from rewards.ovd import gt_items
    items = [{"bbox_2d": _scale(it["bbox_2d"], image_size, input_size), "label": it["label"]}
             for it in gt_items(solution)]
    cats = question.split("objects: [", 1)[-1].split("]", 1)[0] if "objects: [" in question else "the objects"
    body = "```json\n" + json.dumps(items) + "\n```" if items else "None"
    return f"<think>I look for {cats}.</think><answer>{body}</answer>"
