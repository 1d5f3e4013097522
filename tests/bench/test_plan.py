"""bench/plan.py: GPU rates from specifications (hand-worked), layouts that fit, and the config and
RayJob it writes being ones the orchestrator and KubeRay accept."""
import importlib.util
import pathlib
import shlex
import xml.etree.ElementTree as ET

import jsonschema
import pytest
import yaml

import conf
from bench import plan
from bench.loop_model import Workload

REPO = pathlib.Path(__file__).resolve().parents[2]
DOC = plan.assumptions()
EFF = DOC["efficiency"]
# a GPU and a model whose arithmetic is easy: 100 TFLOP/s, 1,000 GB/s, 40 GB
GPU = {"name": "toy", "memory_gb": 40, "bf16_tflops": 100, "hbm_gb_s": 1000, "nvlink_gb_s": 100, "nic_gb_s": 10}
MODEL = {"hub": "toy/model", "params_b": 1.5, "vision_params_b": 0.5, "layers": 10, "kv_heads": 2, "head_dim": 100}
TOY_EFF = {**EFF, "prefill_mfu": 0.5, "decode_bandwidth": 0.5, "decode_step_overhead_s": 0.001, "tp_allreduce_s": 1e-5,
           "gpu_memory_utilization": 0.5, "train_mfu": 0.5, "optimizer_bandwidth": 0.5, "activation_reserve_gb": 2,
           "link": 0.5, "max_seqs": 256}
W = Workload(prompts=4, G=8, prompt_tokens=100, completion_tokens=200, longest_tokens=300, params_b=1.5, beta=0.04)


def test_engine_rates_from_a_gpus_specification():
    r = plan.engine_rates(GPU, MODEL, TOY_EFF, W, tp=1, image_patches=50)
    # weights 3 GB read per decode step at 500 GB/s = 6 ms, + 1 ms overhead
    assert r["decode_step_s"] == pytest.approx(0.007)
    # per sequence: KV 2 x 10 x 2 x 100 x 2 = 8,000 bytes/token x (100 + 100) context / 500 GB/s = 3.2 us,
    # + 2 x 1e9 LM params / 50 TFLOP/s = 40 us
    assert r["decode_seq_s"] == pytest.approx(3.2e-6 + 4e-5)
    # prefill: (2 x 1e9 x 100 + 2 x 0.5e9 x 50) / 50e12 = 5 ms for 100 tokens
    assert r["prefill_tokens_per_s"] == pytest.approx(100 / 0.005)
    # KV room: 40 x 0.5 - 3 - 2 = 15 GB over 8,000 x 400 bytes per sequence = 4,687 -> vLLM's cap
    assert r["max_seqs"] == 256
    two = plan.engine_rates(GPU, MODEL, TOY_EFF, W, tp=2, image_patches=50)
    assert two["decode_step_s"] == pytest.approx(0.001 + 2 * 10 * 1e-5 + 0.003)  # half the weights per GPU, 20 all-reduces
    big = {**MODEL, "params_b": 9.0}  # 18 GB of weights leave 40 x 0.5 - 18 - 2 = 0 for the KV cache
    assert plan.engine_rates(GPU, big, TOY_EFF, W, tp=1, image_patches=50) is None


def test_a_learner_ranks_memory_and_rates():
    # ZeRO-2, 4 ranks: 3 GB weights + 3 GB reference whole, (3 + 18) / 4 sharded, + 2 GB activations
    assert plan.learner_gb(MODEL, 4, 2, 0.04, TOY_EFF) == pytest.approx(3 + 3 + 21 / 4 + 2)
    assert plan.learner_gb(MODEL, 4, 3, 0.0, TOY_EFF) == pytest.approx((3 + 3 + 18) / 4 + 2)  # ZeRO-3, no reference
    r = plan.learner_rates(GPU, MODEL, TOY_EFF, ranks=4, gpus_per_node=8, image_patches=50)
    assert r["train_tokens_per_s"] == pytest.approx(50e12 / 8e9)  # 8 FLOPs per LM parameter (checkpointing)
    assert r["forward_tokens_per_s"] == pytest.approx(50e12 / 2e9)
    assert r["vision_s_per_image"] == pytest.approx(8 * 0.5e9 * 50 / 50e12)
    assert r["optimizer_s"] == pytest.approx(28 * 1.5e9 / 4 / 500e9)
    assert r["allreduce_bytes_per_s"] == pytest.approx(50e9)  # NVLink within the node
    assert plan.learner_rates(GPU, MODEL, TOY_EFF, 16, 8, 50)["allreduce_bytes_per_s"] == pytest.approx(5e9)  # NICs


def test_every_plan_fits_and_the_best_is_the_cheapest_of_the_nearly_fastest():
    w = Workload(prompts=16, G=8, prompt_tokens=460, completion_tokens=1024, params_b=8.29)
    found = plan.plans(w, DOC["gpus"]["h100"], DOC["models"]["7b"], EFF, gpus=32)
    assert found
    for p in found:
        lo = p.layout
        assert lo.devices <= 32 and (16 * 8) % lo.learner_ranks == 0 and lo.engines <= 16
        assert p.learner_gb <= 80 and lo.zero_stage in (2, 3)
    fastest = max(p.prediction.samples_per_s for p in found)
    near = [p for p in found if p.prediction.samples_per_s >= 0.98 * fastest]
    assert found[0] in near and found[0].layout.devices == min(p.layout.devices for p in near)
    # nothing fits 32B on 8 GPUs (its learner states need more than 8 x 80 GB); 32 GPUs do
    w32 = Workload(**{**w.__dict__, "params_b": 33.5})
    assert plan.plans(w32, DOC["gpus"]["h100"], DOC["models"]["32b"], EFF, gpus=8) == []
    assert plan.plans(w32, DOC["gpus"]["h100"], DOC["models"]["32b"], EFF, gpus=32)


def test_more_gpus_never_predict_fewer_samples_per_second():
    class Args:
        prompts, G, image_tokens, completion_tokens, longest_tokens, beta = 32, 8, 400, 512, None, 0.04
        gpu, gpus_per_node, reward_workers = "a100", 8, 16
    counts = [8, 16, 32, 64]
    for k in (0, 1):
        best = plan.best_by_gpus(Args, DOC, "3b", counts, k)
        assert all(b is not None for b in best) and best == sorted(best)


def test_the_written_config_runs_over_vlm_r1s_recipe_with_the_planned_layout(tmp_path, capsys):
    out, job = tmp_path / "plan.yaml", tmp_path / "rayjob.yaml"
    found = plan.main(["--model-size", "7b", "--gpus", "64", "--gpu", "h100", "--G", "8", "--prompts", "16",
                       "--completion-tokens", "2048", "--task", "ovd", "--write", str(out), "--manifest", str(job)])
    printed = capsys.readouterr().out
    assert "| engines | learner ranks |" in printed and "ASSUMED" in printed
    best = found[0].layout
    cfg = conf.load([f"conf={out}"])
    assert (cfg.rollout.num_engines, cfg.rollout.devices_per_engine) == (best.engines, best.devices_per_engine)
    assert (cfg.learner.world_size, cfg.learner.zero_stage, cfg.trainer.max_staleness) == (
        best.learner_ranks, best.zero_stage, best.staleness)
    assert cfg.model.path == "Qwen/Qwen2.5-VL-7B-Instruct" and cfg.rollout.max_new_tokens == 2048
    assert cfg.data.task == "ovd" and cfg.learner.lr == 1e-6  # the rest is VLM-R1's recipe for the task
    assert cfg.rollout.max_model_len >= 2048 + 460
    assert "Predicted" in out.read_text().splitlines()[1]

    config_map, rayjob = yaml.safe_load_all(job.read_text())
    spec = importlib.util.spec_from_file_location("extract", REPO / "docker" / "k8s" / "schemas" / "extract.py")
    extract = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(extract)
    jsonschema.validate(rayjob, extract.load("RayJob"))
    assert config_map["kind"] == "ConfigMap" and config_map["data"]["plan.yaml"] == out.read_text()
    argv = shlex.split(rayjob["spec"]["entrypoint"])
    mounted = tmp_path / "mounted.yaml"  # where the head mounts the ConfigMap
    mounted.write_text(config_map["data"]["plan.yaml"])
    assert "conf=/home/ray/plan/plan.yaml" in argv
    job_cfg = conf.load([f"conf={mounted}" if a.startswith("conf=") else a for a in argv[2:]])
    needed = job_cfg.rollout.num_engines * job_cfg.rollout.devices_per_engine + job_cfg.learner.world_size
    group = rayjob["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]
    have = int(group["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"]) * group["replicas"]
    assert needed == best.devices and needed <= have < needed + 8  # whole nodes, none to spare
    head = rayjob["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]
    assert {"name": "plan", "configMap": {"name": config_map["metadata"]["name"]}} in head["volumes"]


def test_the_chart_is_svg_with_a_line_per_series_from_where_it_fits():
    svg = plan.chart_svg({"3B sync": [1.0, 2.0, 3.0], "32B async": [None, 1.5, 2.5]}, [8, 16, 32], "t")
    root = ET.fromstring(svg)
    lines = root.findall("{http://www.w3.org/2000/svg}polyline")
    assert len(lines) == 2 and len(lines[0].get("points").split()) == 3 and len(lines[1].get("points").split()) == 2
    assert "stroke-dasharray" in ET.tostring(lines[1]).decode()  # asynchronous lines are dashed


def test_a_layout_that_cannot_fit_is_said_so(capsys):
    with pytest.raises(SystemExit, match="no layout of Qwen/Qwen2.5-VL-32B-Instruct fits 8"):
        plan.main(["--model-size", "32b", "--gpus", "8"])
    with pytest.raises(SystemExit):
        plan.main(["--gpus", "1"])


def test_the_docs_chart_is_what_its_documented_command_draws(tmp_path, capsys):
    out = tmp_path / "scaling.svg"
    command = "--chart {} --gpu h100 --prompts 128 --G 8 --completion-tokens 1024"  # as docs/scaling.md says
    assert command.format("docs/img/scaling.svg") in " ".join((REPO / "docs" / "scaling.md").read_text().split())
    plan.main(command.format(out).split())
    assert out.read_text() == (REPO / "docs" / "img" / "scaling.svg").read_text()  # regenerate it when gpus.yaml changes
    assert "| 7B | async |" in capsys.readouterr().out
