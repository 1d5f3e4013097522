"""VLM-R1's single-image mAP protocol run through pycocotools itself (the test oracle).

Written from VLM-R1's description: a COCO ground truth with one 2048x2048 image, categories
from the ground-truth labels in order of appearance, annotations with area (x2-x1)*(y2-y1),
detections of unknown label dropped, every detection scored 1.0, ``COCOeval(..., "bbox")``.
"""
import contextlib
import io

from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval


def pycoco_stats(gt_boxes, gt_labels, dt_boxes, dt_labels):
    cats = {}
    for lab in gt_labels:
        cats.setdefault(lab, len(cats))
    gt = {"images": [{"id": 0, "width": 2048, "height": 2048, "file_name": "0.jpg"}],
          "categories": [{"id": i, "name": n} for n, i in cats.items()], "annotations": []}
    for k, (b, lab) in enumerate(zip(gt_boxes, gt_labels)):
        gt["annotations"].append({"id": k + 1, "image_id": 0, "category_id": cats[lab],
                                  "bbox": [b[0], b[1], b[2] - b[0], b[3] - b[1]],
                                  "area": (b[2] - b[0]) * (b[3] - b[1]), "iscrowd": 0})
    dts = [{"image_id": 0, "category_id": cats[lab], "score": 1.0,
            "bbox": [b[0], b[1], b[2] - b[0], b[3] - b[1]]}
           for b, lab in zip(dt_boxes, dt_labels) if lab in cats]
    if not dts:
        return None
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO()
        coco.dataset = gt
        coco.createIndex()
        ev = COCOeval(coco, coco.loadRes(dts), "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return ev.stats
