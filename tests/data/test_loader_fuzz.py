"""A loader that cannot be crashed: structurally valid rows (real conversations, images, solutions,
reward methods; a real COCO file) with one field at a time broken in every way listed below. Every
broken row is loaded (if it is still valid) or a counted skip with a reason; never an exception,
and the good rows around it always load."""
import json

import pytest
from PIL import Image

from data.loaders import DataError, load_prompts

NESTED = "[" * 5000 + "]" * 5000  # deeper than json's recursion allows
BREAKS = {  # name -> the raw JSON text put in place of a field
    "null": "null", "number": "7", "float": "1.5", "infinity": "Infinity", "nan": "NaN", "bool": "true",
    "empty": '""', "nul": '"a\\u0000b"', "list": "[]", "dict": "{}", "list_of_mixed": '["ok.png", 3]',
    "nested": NESTED, "long": json.dumps("x" * 100_000), "escape_dir": '"../secret.png"', "absolute": '"/etc/passwd"',
    "dict_of_list": '{"a": [1, 2]}', "unknown_reward": '"no_such_reward"', "box_text": '"[1, 2, 3]"',
}
NOT_UTF8 = b'"\xff\xfe\xfa"'
JSONL_FIELDS = ["id", "image", "conversations", "conversations.0", "conversations.0.value", "conversations.1",
                "conversations.1.value", "accu_reward_method"]
# image 8's entry and its one annotation (annotations.0) are broken; images 7 and 9 must still load
COCO_FIELDS = ["annotations.0", "annotations.0.bbox", "annotations.0.bbox.2", "annotations.0.category_id",
               "annotations.0.image_id", "annotations.0.iscrowd", "images.1", "images.1.file_name", "images.1.id"]
MOVES_NOT_BREAKS = {"annotations.0.image_id", "annotations.0.iscrowd"}  # another image's box / a crowd region


@pytest.fixture
def folder(tmp_path):
    img = tmp_path / "imgs"
    img.mkdir()
    for name in ("ok.png", "ok2.png", "ok3.png"):
        Image.new("RGB", (64, 48), "white").save(img / name)
    (tmp_path / "secret.png").write_bytes((img / "ok.png").read_bytes())
    return img


def _good(i: int, image: str = "ok.png") -> dict:
    return {"id": f"good{i}", "image": image, "accu_reward_method": "rec_iou",
            "conversations": [{"from": "human", "value": "<image>find the shape"}, {"from": "gpt", "value": "[1, 1, 20, 20]"}]}


def _with(doc, field: str, raw: bytes) -> bytes:
    """``doc`` as JSON text with ``field`` (dotted, list indices as numbers) replaced by ``raw``."""
    marker = "\x01BROKEN\x01"
    node, parts = doc, field.split(".")
    for p in parts[:-1]:
        node = node[int(p)] if isinstance(node, list) else node[p]
    last = parts[-1]
    if isinstance(node, list):
        node[int(last)] = marker
    else:
        node[last] = marker
    return json.dumps(doc).encode().replace(json.dumps(marker).encode(), raw)


@pytest.mark.parametrize("field", JSONL_FIELDS)
def test_a_broken_jsonl_field_is_loaded_or_counted_never_raised(tmp_path, folder, field):
    for name, raw in [*((n, r.encode()) for n, r in BREAKS.items()), ("not_utf8", NOT_UTF8)]:
        path = tmp_path / f"{field}-{name}.jsonl"
        lines = [json.dumps(_good(0)).encode(), _with(_good(9, "ok2.png"), field, raw), json.dumps(_good(1)).encode()]
        path.write_bytes(b"\n".join(lines) + b"\n")
        prompts, report = load_prompts(str(path), str(folder), "rec")  # raises nothing
        ids = [p.id for p in prompts]
        assert ids[0] == "good0" and ids[-1] == "good1", (field, name)  # the rows around it survive
        assert report.loaded + sum(report.skipped.values()) == 3, (field, name, dict(report.skipped))
        assert all(isinstance(r, str) and r for r in report.skipped), (field, name)


def _coco() -> dict:
    return {"images": [{"id": 7, "file_name": "ok.png", "width": 64, "height": 48},
                       {"id": 8, "file_name": "ok2.png", "width": 64, "height": 48},
                       {"id": 9, "file_name": "ok3.png", "width": 64, "height": 48}],
            "categories": [{"id": 1, "name": "dog"}],
            "annotations": [{"id": 1, "image_id": 8, "category_id": 1, "bbox": [2, 3, 10, 20], "iscrowd": 0},
                            {"id": 2, "image_id": 7, "category_id": 1, "bbox": [20, 5, 8, 8], "iscrowd": 0},
                            {"id": 3, "image_id": 9, "category_id": 1, "bbox": [1, 1, 9, 9], "iscrowd": 0}]}


@pytest.mark.parametrize("field", COCO_FIELDS)
def test_a_broken_coco_field_is_loaded_or_counted_never_raised(tmp_path, folder, field):
    for name, raw in BREAKS.items():
        path = tmp_path / f"{field}-{name}.json"
        path.write_bytes(_with(_coco(), field, raw.encode()))
        if name == "nested":  # json cannot read the file at all: the whole file is refused, naming it
            with pytest.raises(DataError, match=r"not a COCO instances file \(RecursionError"):
                load_prompts(str(path), str(folder), "ovd")
            continue
        prompts, report = load_prompts(str(path), str(folder), "ovd")  # raises nothing
        assert "7" in [p.id for p in prompts] and "9" in [p.id for p in prompts], (field, name, dict(report.skipped))
        assert len(prompts) <= 3 and report.loaded == len(prompts)
        if "8" not in [p.id for p in prompts] and field not in MOVES_NOT_BREAKS:  # dropped: with a reason
            assert report.skipped, (field, name)
