"""bench.probe: the localisation probe's own pieces (its figures are in docs/learning.md)."""
import pytest
import torch


def test_iou_and_the_loss_covers_only_the_answer():
    from bench.probe import collate, iou
    assert iou([0, 0, 10, 10], [5, 0, 15, 10]) == pytest.approx(50 / 150)
    assert iou([0, 0, 10, 10], [20, 20, 30, 30]) == 0.0 and iou([0, 0, 0, 0], [0, 0, 0, 0]) == 0.0
    items = [{"ids": torch.tensor([5, 6, 7]), "ans": torch.tensor([8, 9]), "pix": torch.zeros(4, 3),
              "grid": torch.tensor([[1, 2, 2]])},
             {"ids": torch.tensor([5, 6]), "ans": torch.tensor([9]), "pix": torch.zeros(4, 3),
              "grid": torch.tensor([[1, 2, 2]])}]
    b = collate(items, pad=0)
    assert b["input_ids"].tolist() == [[5, 6, 7, 8, 9], [5, 6, 9, 0, 0]]
    assert b["labels"].tolist() == [[-100, -100, -100, 8, 9], [-100, -100, 9, -100, -100]]
    assert b["attention_mask"].tolist() == [[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]] and b["pixel_values"].shape == (8, 3)


def test_the_probe_trains_evaluates_and_prints_its_row(tmp_path, capsys):
    from bench.probe import main
    main(["--family", "qwen3_vl", "--steps", "2", "--eval-every", "2", "--n-train", "8", "--n-val", "4",
          "--scene", '{"sizes": [84], "side": [24, 48], "shapes": [1, 1]}', "--out", str(tmp_path)])
    out = capsys.readouterr().out
    assert "8 train, 4 val" in out and "image tokens 9" in out and "parsed" in out
    assert "| qwen3_vl (tiny) |" in out and "val accuracy at step 2 |" in out
    with pytest.raises(SystemExit, match="no learned position embeddings"):
        main(["--family", "qwen2_5_vl", "--pos-scale", "1", "--steps", "1", "--n-train", "4", "--n-val", "2",
              "--scene", '{"sizes": [84], "side": [24, 48], "shapes": [1, 1]}', "--out", str(tmp_path)])
