"""The synthetic generator: VLM-R1's format, deterministic, with disjoint splits."""
import hashlib
import json

import pytest

from data import synthetic
from data.synthetic import RELATIONS_ID, RELATIONS_OOD, generate


def _digest(folder):
    h = hashlib.sha256()
    for p in sorted(folder.rglob("*")):
        if p.is_file():
            h.update(p.name.encode() + p.read_bytes())
    return h.hexdigest()


def test_same_seed_same_bytes_other_seed_other_data(tmp_path):
    generate(tmp_path / "a", seed=3, n_train=20, n_val=5, n_ood=5, progress=False)
    generate(tmp_path / "b", seed=3, n_train=20, n_val=5, n_ood=5, progress=False)
    generate(tmp_path / "c", seed=4, n_train=20, n_val=5, n_ood=5, progress=False)
    assert _digest(tmp_path / "a") == _digest(tmp_path / "b")
    assert _digest(tmp_path / "a") != _digest(tmp_path / "c")


def test_rows_follow_vlm_r1_format_and_boxes_fit(synthetic):
    from PIL import Image
    n_none = 0
    for task in ("rec", "ovd"):
        for split in ("train", "val", "val_ood"):
            for line in open(synthetic / f"{task}_{split}.jsonl"):
                row = json.loads(line)
                assert set(row) == {"id", "image", "conversations"}
                human, gpt = row["conversations"]
                assert human["from"] == "human" and human["value"].startswith("<image>")
                assert gpt["from"] == "gpt"
                w, h = Image.open(synthetic / row["image"]).size
                if task == "rec":
                    boxes = [json.loads(gpt["value"])]
                elif gpt["value"] == "None":
                    boxes, n_none = [], n_none + 1
                else:
                    assert gpt["value"].startswith("```json\n") and gpt["value"].endswith("\n```")
                    items = json.loads(gpt["value"][8:-4])
                    assert all(set(it) == {"bbox_2d", "label"} for it in items)
                    boxes = [it["bbox_2d"] for it in items]
                for x1, y1, x2, y2 in boxes:
                    assert 0 <= x1 < x2 <= w and 0 <= y1 < y2 <= h
    assert n_none > 0  # some OVD rows ask for categories that are absent


def test_splits_are_disjoint_and_ood_is_harder_and_rephrased(synthetic):
    def rows(name):
        return [json.loads(l) for l in open(synthetic / name)]
    train, val, ood = rows("rec_train.jsonl"), rows("rec_val.jsonl"), rows("rec_val_ood.jsonl")
    images = lambda rs: {(synthetic / r["image"]).read_bytes() for r in rs}  # noqa: E731
    assert not images(train) & images(val) and not images(train) & images(ood)
    id_phrases = [p.split("{b}")[0].replace("{a}", "").strip() for p in RELATIONS_ID.values()]
    ood_phrases = [p.split("{b}")[0].replace("{a}", "").strip() for p in RELATIONS_OOD.values()]
    q = lambda r: r["conversations"][0]["value"]  # noqa: E731
    assert not any(ph in q(r) for r in train + val for ph in ood_phrases)
    assert not any(f" {ph} the " in q(r) for r in ood for ph in id_phrases)


def test_ood_scenes_have_more_distractors():
    import random
    n_id = [len(synthetic._scene(random.Random(i), random.Random(i).randint(1, 3))[3]) for i in range(50)]
    n_ood = [len(synthetic._scene(random.Random(i), random.Random(i).randint(4, 6))[3]) for i in range(50)]
    assert max(n_id) <= 3 and min(n_ood) >= 3 and sum(n_ood) > 2 * sum(n_id)


def test_scene_levers_change_only_what_they_name(tmp_path):
    """The testbed levers (bench/testbed.py): shape sides, shapes per image, and a background
    whose tint encodes position, showing through translucent shapes."""
    from PIL import Image

    from data.synthetic import Scene
    spec = Scene(sizes=(112,), shapes=(2, 2), side=(28, 56), alpha=0.75, position_code=True)
    generate(tmp_path, seed=0, n_train=30, n_val=1, n_ood=1, tasks=("ovd",), spec=spec, progress=False)
    rows = [json.loads(x) for x in open(tmp_path / "ovd_train.jsonl")]
    for row in rows:
        img = Image.open(tmp_path / row["image"]).convert("RGB")
        assert img.size == (112, 112)
        boxes = [it["bbox_2d"] for it in json.loads(row["conversations"][1]["value"][8:-4])] \
            if row["conversations"][1]["value"] != "None" else []
        assert all(28 <= x2 - x1 <= 56 and x2 - x1 == y2 - y1 for x1, y1, x2, y2 in boxes)
    img = Image.open(tmp_path / rows[0]["image"]).convert("RGB")
    (r_l, _, _), (r_r, _, _) = img.getpixel((0, 56)), img.getpixel((111, 56))
    (_, _, b_top), (_, _, b_bottom) = img.getpixel((56, 0)), img.getpixel((56, 111))  # brighter right, bluer up
    assert r_r - r_l >= 60 and b_top - b_bottom >= 40
    # the default scene is the plain one: no code, opaque shapes, sides 16-44
    assert synthetic.DEFAULT_SCENE == Scene() and not Scene().position_code and Scene().side == (16, 44)
    for bad, msg in (({"side": (60, 40)}, "low <= high"), ({"sizes": (56,), "side": (60, 60)}, "must fit"),
                     ({"alpha": 0.0}, "opacity")):
        with pytest.raises(ValueError, match=msg):
            Scene(**bad)
