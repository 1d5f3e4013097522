"""Loaders: VLM-R1 JSONL and COCO in, every bad row reported with file:line and skipped."""
import json
import os
import pathlib

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st
from PIL import Image

from data.loaders import DataError, load_prompts


def _row(image, solution="[1, 1, 20, 20]", **extra):
    return {"id": extra.pop("id", "r"), "image": image, **extra,
            "conversations": [{"from": "human", "value": "<image>find it"}, {"from": "gpt", "value": solution}]}


@pytest.fixture
def folder(tmp_path):
    img = tmp_path / "imgs"
    img.mkdir()
    Image.new("RGB", (64, 48), "white").save(img / "ok.png")
    Image.new("RGB", (64, 48), "white").save(img / "ok2.png")
    (img / "zero.png").write_bytes(b"")
    (img / "text.png").write_text("not an image")
    data = (img / "ok.png").read_bytes()
    (img / "truncated.png").write_bytes(data[: len(data) // 2])
    Image.new("RGB", (3000, 3000), "white").save(img / "big.png")
    (tmp_path / "secret.png").write_bytes(data)
    os.symlink(tmp_path / "secret.png", img / "link.png")
    return img


def _write(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return str(path)


def test_every_bad_row_is_reported_with_its_line_and_good_rows_survive(tmp_path, folder):
    rows = [
        _row("ok.png", id="good1"),                                  # 1
        "{not json",                                                 # 2 malformed_json
        {"id": "x", "image": "ok.png"},                              # 3 bad_row (no conversations)
        _row("missing.png"),                                         # 4 missing_image
        _row("zero.png"),                                            # 5 unreadable_image
        _row("text.png"),                                            # 6 unreadable_image
        _row("truncated.png"),                                       # 7 unreadable_image
        _row("big.png"),                                             # 8 image_too_large
        _row("../secret.png"),                                       # 9 image_outside_folder
        _row("/etc/passwd"),                                         # 10 image_outside_folder
        _row("link.png"),                                            # 11 image_outside_folder (symlink)
        _row("ok.png", solution="[1, 1, 200, 20]"),                  # 12 box_outside_image
        _row("ok.png", solution="[30, 1, 20, 20]"),                  # 13 bad_solution (x1 > x2)
        _row("ok.png", solution="the man"),                          # 14 bad_solution
        _row("ok.png", accu_reward_method="telepathy"),              # 15 unknown_reward
        _row(["ok.png", "ok2.png"], id="good2"),                     # 16 multi-image: fine
        _row(["ok.png"] * 5),                                        # 17 too_many_images (engines take 4)
    ]
    prompts, report = load_prompts(_write(tmp_path / "d.jsonl", rows), str(folder), "rec", max_image_pixels=1_000_000)
    assert [p.id for p in prompts] == ["good1", "good2"]
    assert prompts[1].images == (str(folder / "ok.png"), str(folder / "ok2.png"))
    assert prompts[1].image_sizes == ((64, 48), (64, 48))
    assert dict(report.skipped) == {"malformed_json": 1, "bad_row": 1, "missing_image": 1, "unreadable_image": 3,
                                    "image_too_large": 1, "image_outside_folder": 3, "box_outside_image": 1,
                                    "bad_solution": 2, "unknown_reward": 1, "too_many_images": 1}
    assert report.loaded == 2
    summary = report.summary()
    assert "15 skipped" in summary and "d.jsonl:2" in summary and "d.jsonl:9" in summary


def test_strict_mode_stops_at_the_first_bad_row_with_its_location(tmp_path, folder):
    path = _write(tmp_path / "d.jsonl", [_row("ok.png"), _row("missing.png")])
    with pytest.raises(DataError, match=r"d\.jsonl:2: missing_image.*data\.strict=true"):
        load_prompts(path, str(folder), "rec", strict=True)


def test_ovd_solutions_none_and_boxes_checked(tmp_path, folder):
    good = "```json\n" + json.dumps([{"bbox_2d": [1, 1, 10, 10], "label": "dog"}]) + "\n```"
    outside = "```json\n" + json.dumps([{"bbox_2d": [1, 1, 100, 10], "label": "dog"}]) + "\n```"
    nolabel = "```json\n" + json.dumps([{"bbox_2d": [1, 1, 10, 10]}]) + "\n```"
    path = _write(tmp_path / "o.jsonl", [_row("ok.png", good, id="a"), _row("ok.png", "None", id="b"),
                                         _row("ok.png", outside), _row("ok.png", nolabel)])
    prompts, report = load_prompts(path, str(folder), "ovd")
    assert [p.id for p in prompts] == ["a", "b"]
    assert dict(report.skipped) == {"box_outside_image": 1, "bad_solution": 1}


def test_colon_separated_files_folders_and_reward_overrides(tmp_path, folder):
    other = tmp_path / "other"
    other.mkdir()
    Image.new("RGB", (30, 30)).save(other / "o.png")
    f1 = _write(tmp_path / "a.jsonl", [_row("ok.png", id="a1"), _row("ok.png", id="a2", accu_reward_method="rec_acc")])
    f2 = _write(tmp_path / "b.jsonl", [_row("o.png", id="b1")])
    prompts, _ = load_prompts(f"{f1}:{f2}", f"{folder}:{other}", "rec", accu_methods="iou:odLength")
    assert [(p.id, p.accu_method) for p in prompts] == [("a1", "iou"), ("a2", "rec_acc"), ("b1", "odLength")]
    # ids repeat across VLM-R1 files: they are made unique, since completions are keyed by them
    f3 = _write(tmp_path / "c.jsonl", [_row("o.png", id="a1")])
    ids = [p.id for p in load_prompts(f"{f1}:{f3}", f"{folder}:{other}", "rec")[0]]
    assert len(ids) == len(set(ids)) == 3 and ids[:2] == ["a1", "a2"] and ids[2].startswith("a1@") and "c.jsonl:1" in ids[2]
    assert prompts[2].images == (str(other / "o.png"),)
    with pytest.raises(DataError, match="2 data files but 3 image folders"):
        load_prompts(f"{f1}:{f2}", f"{folder}:{other}:{other}", "rec")
    with pytest.raises(DataError, match="data file not found"):
        load_prompts(str(tmp_path / "nope.jsonl"), str(folder), "rec")


def test_validation_images_are_searched_in_the_training_folders(tmp_path, folder):
    """Two training files with their own folders, one validation file mixing their images (RefCOCO
    and LISA kept apart, as VLM-R1 users do): each image is found in the first folder holding it."""
    other = tmp_path / "other"
    other.mkdir()
    Image.new("RGB", (30, 30)).save(other / "o.png")
    Image.new("RGB", (64, 48)).save(other / "ok.png")  # also in `folder`: the first folder wins
    val = _write(tmp_path / "val.jsonl", [_row("ok.png", id="v1"), _row("o.png", id="v2"), _row("gone.png", id="v3"),
                                          _row("../secret.png", id="v4")])
    with pytest.raises(DataError, match="1 data files but 2 image folders"):  # only validation files search
        load_prompts(val, f"{folder}:{other}", "rec")
    prompts, report = load_prompts(val, f"{folder}:{other}", "rec", search_folders=True)
    assert [(p.id, p.images) for p in prompts] == [("v1", (str(folder / "ok.png"),)), ("v2", (str(other / "o.png"),))]
    assert report.skipped == {"missing_image": 1, "image_outside_folder": 1}
    assert "'gone.png' is in none of the 2 training image folders" in report.examples["missing_image"][0]
    assert "data.val_image_folders" in report.examples["missing_image"][0]
    one, _ = load_prompts(val, str(other), "rec", search_folders=True)  # one folder: as before
    assert [p.id for p in one] == ["v1", "v2"] and one[0].images == (str(other / "ok.png"),)


def test_coco_instances_become_ovd_rows(tmp_path, folder):
    coco = {"images": [{"id": 7, "file_name": "ok.png", "width": 64, "height": 48},
                       {"id": 8, "file_name": "ok2.png", "width": 64, "height": 48}],
            "categories": [{"id": 1, "name": "dog"}, {"id": 2, "name": "cat"}],
            "annotations": [{"id": 1, "image_id": 7, "category_id": 1, "bbox": [2, 3, 10, 20], "iscrowd": 0},
                            {"id": 2, "image_id": 7, "category_id": 2, "bbox": [20, 5, 8, 8], "iscrowd": 0},
                            {"id": 3, "image_id": 7, "category_id": 2, "bbox": [0, 0, 60, 40], "iscrowd": 1},
                            {"id": 4, "image_id": 8, "category_id": 1, "bbox": "oops"}]}
    path = tmp_path / "instances.json"
    path.write_text(json.dumps(coco))
    prompts, report = load_prompts(str(path), str(folder), "ovd")
    assert len(prompts) == 1 and prompts[0].id == "7"
    assert "[dog, cat]" in prompts[0].question
    items = json.loads(prompts[0].solution.split("```json\n")[1].split("\n```")[0])
    assert items == [{"bbox_2d": [2, 3, 12, 23], "label": "dog"}, {"bbox_2d": [20, 5, 28, 13], "label": "cat"}]
    assert dict(report.skipped) == {"bad_annotation": 1}


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.one_of(st.text(max_size=80), st.binary(max_size=40).map(lambda b: b.decode("latin-1")),
                          st.dictionaries(st.sampled_from(["id", "image", "conversations", "x"]),
                                          st.one_of(st.none(), st.integers(), st.text(max_size=10),
                                                    st.lists(st.text(max_size=5), max_size=3)), max_size=4).map(json.dumps)),
                max_size=12))
def test_fuzzed_files_never_crash_and_never_lose_good_rows(tmp_path, folder, junk):
    lines = [l.replace("\n", " ").replace("\r", " ") for l in junk]
    good = [json.dumps(_row("ok.png", id=f"good{i}")) for i in range(3)]
    path = tmp_path / "fuzz.jsonl"
    path.write_text("\n".join(good[:1] + lines + good[1:]) + "\n", encoding="utf-8", errors="surrogatepass")
    prompts, report = load_prompts(str(path), str(folder), "rec")
    ids = [p.id for p in prompts]
    assert [i for i in ids if i.startswith("good")] == ["good0", "good1", "good2"]
    assert report.loaded == len(prompts)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.text(st.characters(codec="utf-8"), min_size=1, max_size=12), min_size=1, max_size=4),
       st.booleans())
def test_ovd_labels_in_any_unicode_load_and_score_exactly(tmp_path, folder, labels, ascii_escaped):
    """Odd unicode labels (RTL, zero-width, combining marks, emoji, control characters, quotes,
    JSON escapes) survive loading and a perfect answer naming them scores 1."""
    from rewards import REGISTRY
    items = [{"bbox_2d": [1 + 5 * i, 1, 20 + 5 * i, 20], "label": lab} for i, lab in enumerate(labels)]
    solution = "```json\n" + json.dumps(items, ensure_ascii=ascii_escaped) + "\n```"
    path = tmp_path / "u.jsonl"
    path.write_text(json.dumps(_row("ok.png", solution, id="u"), ensure_ascii=ascii_escaped) + "\n", encoding="utf-8")
    prompts, report = load_prompts(str(path), str(folder), "ovd")
    assert [p.id for p in prompts] == ["u"] and report.loaded == 1
    answer = "<think>x</think><answer>```json\n" + json.dumps(items, ensure_ascii=False) + "\n```</answer>"
    for name in ("ovd_map", "ovd_odlength"):
        value, failure = REGISTRY[name].evaluate(answer, prompts[0].solution)
        assert failure is None and value == pytest.approx(1.0), (name, labels)


def test_the_run_reads_validation_images_from_their_own_or_the_training_folders(tmp_path, folder):
    import conf
    from data.prepare import load_splits
    other, val_dir = tmp_path / "other", tmp_path / "val_imgs"
    other.mkdir(), val_dir.mkdir()
    Image.new("RGB", (30, 30)).save(other / "o.png")
    Image.new("RGB", (40, 40)).save(val_dir / "v.png")
    f1 = _write(tmp_path / "a.jsonl", [_row("ok.png", id="a1")])
    f2 = _write(tmp_path / "b.jsonl", [_row("o.png", id="b1")])
    val = _write(tmp_path / "val.jsonl", [_row("ok.png", id="v1"), _row("o.png", id="v2")])
    base = [f"data.train_files={f1}:{f2}", f"data.image_folders={folder}:{other}", f"data.val_files={val}",
            f"data.synthetic.dir={tmp_path / 'syn'}"]
    train, val_prompts, report = load_splits(conf.load(base).data)  # searched in the training folders
    assert [p.id for p in train] == ["a1", "b1"] and [p.id for p in val_prompts] == ["v1", "v2"]
    own = _write(tmp_path / "val2.jsonl", [_row("v.png", id="w1"), _row("ok.png", id="w2")])
    _, val_prompts, report = load_splits(conf.load([*base[:2], f"data.val_files={own}",
                                                  f"data.val_image_folders={val_dir}", base[3]]).data)
    assert [p.images for p in val_prompts] == [(str(val_dir / "v.png"),)] and report.skipped == {"missing_image": 1}
    with pytest.raises(DataError, match="no usable validation rows.*: 2 missing_image"):
        load_splits(conf.load([*base[:2], f"data.val_files={own}", f"data.val_image_folders={other}",
                               base[3]]).data)
    # mode=eval reads only the validation files: training files that do not exist stop nothing
    only_val = load_splits(conf.load([f"data.train_files={tmp_path / 'gone.jsonl'}", f"data.val_files={val}",
                                      f"data.image_folders={folder}", base[3]]).data, train=False)
    assert only_val[0] == [] and [p.id for p in only_val[1]] == ["v1"]


def test_rows_too_long_for_the_engines_are_counted_skips_with_the_images_tokens(tmp_path, folder, tiny_model):
    """data.prepare.fit_to_engines: prompt tokens, images included (at the configured pixel limits),
    against rollout.max_model_len. A large image alone can push a short question over the limit; the good rows survive in order."""
    from omegaconf import OmegaConf

    from data.loaders import SkipReport
    from data.prepare import fit_to_engines
    Image.new("RGB", (900, 900), "white").save(folder / "large.png")
    path = _write(tmp_path / "rows.jsonl", [_row("ok.png", id="short"), _row("large.png", id="large_image"),
                                            {**_row("ok.png", id="long_text"), "conversations": [
                                                {"from": "human", "value": "<image>find " + "the red one " * 300},
                                                {"from": "gpt", "value": "[1, 1, 20, 20]"}]},
                                            _row("ok2.png", id="short2")])
    report = SkipReport()
    rows, _ = load_prompts(path, str(folder), "rec", report=report, max_image_pixels=10**7)
    # model.max_pixels as configured (the tiny model's own limit would shrink the large image to fit)
    model = OmegaConf.create({"min_pixels": None, "max_pixels": 1_000_000})
    train, val = fit_to_engines(rows, rows[:1], tiny_model, model, 512, report)
    assert [p.id for p in train] == ["short", "short2"] and [p.id for p in val] == ["short"]
    assert report.skipped["prompt longer than rollout.max_model_len"] == 2 and report.loaded == 2
    assert "rows.jsonl:2" in report.summary() and "raise rollout.max_model_len" in report.summary()
    # the same rows under a limit they all fit: nothing skipped
    assert len(fit_to_engines(rows, [], tiny_model, model, 100_000, SkipReport())[0]) == 4
    with pytest.raises(DataError, match="no usable training rows"):
        fit_to_engines(rows[1:3], [], tiny_model, model, 512, SkipReport())
    with pytest.raises(DataError, match="data.strict=true"):
        fit_to_engines(rows, [], tiny_model, model, 512, SkipReport(), strict=True)


# ---------------------------------------------------------------------------- tables: parquet, datasets
def _png(color: str, size=(64, 48)) -> bytes:
    import io
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format="PNG")
    return buf.getvalue()


def _cell(image) -> list[dict]:
    """Parquet columns hold one type: every image cell as a list of {bytes, path} structs."""
    items = image if isinstance(image, list) else [image]
    return [it if isinstance(it, dict) else {"bytes": it, "path": None} if isinstance(it, bytes)
            else {"bytes": None, "path": it} for it in items]


def test_a_parquet_table_loads_like_its_jsonl_with_embedded_images_and_counted_skips(tmp_path, folder):
    import pyarrow as pa
    import pyarrow.parquet as pq
    red = _png("red")
    rows = [  # image: a path, bytes, {bytes, path} (datasets' Image), a list; then the bad ones
        {"id": "path", "image": "ok.png", "problem": "find it", "solution": "[1, 1, 20, 20]"},
        {"id": "bytes", "image": red, "problem": "find it", "solution": "[1, 1, 20, 20]"},
        {"id": "struct", "image": {"bytes": red, "path": "red.png"}, "problem": "find it", "solution": "[2, 2, 20, 20]"},
        {"id": "two", "image": [red, "ok2.png"], "problem": "find it", "solution": "[1, 1, 20, 20]"},
        {"id": "corrupt", "image": red[: len(red) // 2], "problem": "find it", "solution": "[1, 1, 20, 20]"},
        {"id": "nobox", "image": red, "problem": "find it", "solution": "the man"},
        {"id": "noq", "image": red, "problem": None, "solution": "[1, 1, 20, 20]"},
        {"id": "gone", "image": "missing.png", "problem": "find it", "solution": "[1, 1, 20, 20]"},
    ]
    path = tmp_path / "d.parquet"
    pq.write_table(pa.Table.from_pylist([{**r, "image": _cell(r["image"])} for r in rows]), path, row_group_size=3)
    cache = tmp_path / "cache"
    prompts, report = load_prompts(str(path), str(folder), "rec", image_cache=str(cache))
    assert [p.id for p in prompts] == ["path", "bytes", "struct", "two"]
    assert dict(report.skipped) == {"unreadable_image": 1, "bad_solution": 1, "bad_row": 1, "missing_image": 1}
    assert f"{path}:5" in report.summary()  # file:row, as for JSONL lines
    assert prompts[1].images == prompts[2].images == prompts[3].images[:1]  # one file per distinct image
    assert open(prompts[1].images[0], "rb").read() == red and prompts[1].image_sizes == ((64, 48),)
    assert pathlib.Path(prompts[1].images[0]).parent == cache and prompts[3].images[1] == str(folder / "ok2.png")
    jsonl, _ = load_prompts(_write(tmp_path / "d.jsonl", [_row("ok.png", id="path")]), str(folder), "rec")
    assert (prompts[0].question, prompts[0].solution, prompts[0].images, prompts[0].image_sizes) == (
        jsonl[0].question, jsonl[0].solution, jsonl[0].images, jsonl[0].image_sizes)
    odd = tmp_path / "odd.parquet"  # an image column of numbers: each row a counted skip
    pq.write_table(pa.Table.from_pylist([{"image": 7, "problem": "find it", "solution": "[1, 1, 20, 20]"}]), odd)
    assert load_prompts(str(odd), str(folder), "rec")[1].skipped == {"bad_image_entry": 1}
    with pytest.raises(DataError, match="not a readable parquet file"):
        (tmp_path / "junk.parquet").write_bytes(b"PAR1 not really")
        load_prompts(str(tmp_path / "junk.parquet"), "", "qa")
    _, report = load_prompts(str(path), str(folder), "rec")  # no image_cache: the embedded ones are skips
    assert report.loaded == 1 and report.skipped["bad_image_entry"] == 6


def test_a_datasets_folder_maps_its_columns_and_names_its_splits(tmp_path, folder):
    import datasets
    feats = datasets.Features({"question": datasets.Value("string"), "answer": datasets.Value("string"),
                               "picture": datasets.Image(), "method": datasets.Value("string")})
    table = {"question": ["How many shapes?", "Is it red?"], "answer": ["3", "yes"],
             "picture": [Image.new("RGB", (40, 30), "blue"), Image.new("RGB", (40, 30), "red")],
             "method": ["numeric", None]}
    dd = datasets.DatasetDict({"train": datasets.Dataset.from_dict(table, features=feats),
                               "test": datasets.Dataset.from_dict(table, features=feats).select([1])})
    dd.save_to_disk(str(tmp_path / "ds"))
    cols = {"problem": "question", "solution": "answer", "image": "picture", "reward_method": "method"}
    with pytest.raises(DataError, match="#<split>: train, test"):
        load_prompts(str(tmp_path / "ds"), "", "qa", columns=cols, image_cache=str(tmp_path / "c"))
    with pytest.raises(DataError, match="no column 'problem'.*data.columns.problem"):
        load_prompts(f"{tmp_path / 'ds'}#train", "", "qa", image_cache=str(tmp_path / "c"))
    prompts, report = load_prompts(f"{tmp_path / 'ds'}#train:{tmp_path / 'ds'}#test", "", "qa", columns=cols,
                                   image_cache=str(tmp_path / "c"))
    assert [(p.question, p.solution, p.accu_method, p.image_sizes) for p in prompts] == [
        ("How many shapes?", "3", "numeric", ((40, 30),)), ("Is it red?", "yes", None, ((40, 30),)),
        ("Is it red?", "yes", None, ((40, 30),))]
    assert prompts[1].images == prompts[2].images and report.loaded == 3 and not report.skipped
    dd["train"].save_to_disk(str(tmp_path / "one"))  # one Dataset: no split to name
    conv = datasets.Dataset.from_dict({"image": ["ok.png"], "conversations": [
        [{"from": "human", "value": "<image>find it"}, {"from": "gpt", "value": "[1, 1, 20, 20]"}]]})
    conv.to_parquet(str(tmp_path / "conv.parquet"))  # VLM-R1's row layout, as a table
    prompts, _ = load_prompts(f"{tmp_path / 'conv.parquet'}", str(folder), "rec")
    assert [(p.question, p.solution) for p in prompts] == [("find it", "[1, 1, 20, 20]")]
    assert len(load_prompts(str(tmp_path / "one"), "", "qa", columns=cols, image_cache=str(tmp_path / "c"))[0]) == 2
    with pytest.raises(DataError, match="cannot load this dataset from the hub.*save_to_disk"):
        load_prompts("hf://no-such-org/no-such-set#train", "", "qa")  # tests run with HF_HUB_OFFLINE=1


def test_the_config_reads_a_table_through_its_column_mapping(tmp_path):
    import datasets

    import conf
    from data.prepare import load_splits
    datasets.Dataset.from_dict({"q": ["How many shapes?"] * 3, "a": ["3", "4", "5"],
                                "img": [{"bytes": _png("green"), "path": None}] * 3},
                               features=datasets.Features({"q": datasets.Value("string"), "a": datasets.Value("string"),
                                                           "img": datasets.Image()})).to_parquet(str(tmp_path / "t.parquet"))
    cfg = conf.resolve(conf.load(["conf=qa", f"data.train_files={tmp_path / 't.parquet'}", "data.val_files=null",
                                  "data.image_folders=", "data.columns.problem=q", "data.columns.solution=a",
                                  "data.columns.image=img"]), tmp_path / "cache")
    train, val, report = load_splits(cfg.data)
    assert [p.solution for p in train] == ["3", "4", "5"] and val == [] and report.loaded == 3
    assert train[0].images[0].startswith(str(tmp_path / "cache" / "images"))
