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


def test_qa_rows_load_with_their_methods_and_their_answers_are_right(tmp_path):
    """VLM-R1's other tasks: every kind loads without a skip, names its accuracy reward, and its
    answer is what the scene shows (checked against the scene the generator drew)."""
    import random
    from data import synthetic
    from data.loaders import load_prompts
    files = synthetic.generate(tmp_path, seed=0, n_train=30, n_val=5, n_ood=5, tasks=tuple(synthetic.QA_KINDS),
                               progress=False)
    for kind, method in synthetic.QA_KINDS.items():
        prompts, report = load_prompts(str(files[f"{kind}_train"]), str(tmp_path), "qa")
        assert len(prompts) == 30 and report.loaded == 30 and not report.skipped
        assert {p.accu_method for p in prompts} == {method} and {p.task for p in prompts} == {"qa"}
        assert {len(p.images) for p in prompts} == ({2} if kind == "gui" else {1})
    # the answers, against the scenes re-drawn with the generator's own seeded sequence
    def scenes(kind, n, ok=lambda shapes: True):
        rng = random.Random(f"0-{kind}-train")
        for _ in range(n):
            k = rng.randint(*synthetic.DEFAULT_SCENE.shapes)
            while True:
                _, _, _, shapes = synthetic._scene(rng, k, synthetic.DEFAULT_SCENE)
                if shapes and ok(shapes):
                    break
            yield rng, shapes
    rows = [json.loads(x) for x in open(files["count_train"])]
    for row, (rng, shapes) in zip(rows, scenes("count", 30)):
        assert row["conversations"][1]["value"] == str(len(shapes))
    rows = [json.loads(x) for x in open(files["mcq_train"])]
    for row, (rng, shapes) in zip(rows, scenes("mcq", 30, synthetic._nameable)):
        q, a = (c["value"] for c in row["conversations"])
        synthetic._qa(rng, "mcq", shapes)  # keep the sequence in step
        colour = q.split(f" {a}. ")[1].split(" ")[0]
        what = q.split("What colour is ")[1].split("?")[0]
        named = [s for s in shapes if what == f"the {s.kind}"] or [max(shapes, key=lambda s: s.area)]
        assert len(named) == 1 and named[0].colour == colour, (q, a, shapes)


def test_shift_splits_change_one_thing_deterministically_and_share_nothing_with_training(tmp_path):
    """The out-of-domain shifts (``data.scenes.SHIFTS``, the learning benchmark's splits): the same
    bytes from the same seed, no image or id shared with train or val, the in-domain shape count,
    and exactly the named shift -- sides outside the trained range, an unseen image size, dark
    backgrounds, unseen colours, boxes in the corners -- which no training row shows."""
    from PIL import Image

    from data.scenes import SCENES, SHIFTS
    from data.synthetic import BACKGROUND_SETS, COLOURS
    spec, names = SCENES["one_shape"], tuple(SHIFTS)
    for d in ("a", "b"):
        generate(tmp_path / d, seed=0, n_train=200, n_val=20, n_ood=40, tasks=("rec",), spec=spec, shifts=names,
                 progress=False)
    assert _digest(tmp_path / "a") == _digest(tmp_path / "b")
    root = tmp_path / "a"

    def rows(split):
        out = []
        for line in open(root / f"rec_{split}.jsonl"):
            r = json.loads(line)
            img = Image.open(root / r["image"]).convert("RGB")
            x1, y1, x2, y2 = box = json.loads(r["conversations"][1]["value"])
            out.append({"id": r["id"], "bytes": (root / r["image"]).read_bytes(), "size": img.size, "box": box,
                        "side": x2 - x1, "shape_rgb": img.getpixel(((x1 + x2) // 2, (y1 + y2) // 2)),
                        "background": img.getpixel((0 if x1 > 0 else img.width - 1, 0)),  # outside the box
                        "corner": min(x1, img.width - 1 - x2) <= 2 and min(y1, img.height - 1 - y2) <= 2})
        return out

    train, val = rows("train"), rows("val")
    seen_bytes, seen_ids = {r["bytes"] for r in train + val}, {r["id"] for r in train + val}
    sides = {r["side"] for r in train}
    assert spec.side[0] <= min(sides) and max(sides) <= spec.side[1]
    light, colours = set(BACKGROUND_SETS["light"]), set(COLOURS.values())
    for name in names:
        split = rows(f"val_{name}")
        assert len(split) == 40 and not {r["bytes"] for r in split} & seen_bytes and not {r["id"] for r in split} & seen_ids
        s = [r["side"] for r in split]
        if name == "small":
            assert max(s) < min(sides)
        elif name == "large":
            assert min(s) > max(sides)
        else:
            assert min(sides) <= min(s) and max(s) <= max(sides), name
        assert {r["size"] for r in split} == ({(126, 126)} if name == "image_size" else {(84, 84)}), name
        bgs = {r["background"] for r in split}
        assert (bgs.isdisjoint(light) and max(map(sum, bgs)) < 200) if name == "dark_background" else bgs <= light, name
        shape_rgb = {r["shape_rgb"] for r in split}
        assert (shape_rgb.isdisjoint(colours) and len(shape_rgb) > 1) if name == "new_colours" else shape_rgb <= colours
        assert all(r["corner"] for r in split) if name == "corners" else sum(r["corner"] for r in split) < 0.2 * len(split)
    assert sum(r["corner"] for r in train) < 0.1 * len(train)  # training rarely puts a shape there
