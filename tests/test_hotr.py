"""HOTR: the shared instance set, HO pointers, triplet matching, losses, post-processing, HQM through
the unchanged seams, configs."""

from __future__ import annotations

import argparse

import numpy as np
import pytest
import torch

from conftest import DETECTOR_OVERRIDES, NUM_OBJ, NUM_VERB, make_target, mining_steps, tiny_detector_cfg
from hqm.config import ConfigError, load_config
from hqm.detectors import build_criterion, build_matcher, build_model
from hqm.engine.trainer import freeze_except
from hqm.models.hotr_losses import pointer_targets
from hqm.models.postprocess import PostProcessHOTR
from hqm.structures import DatasetMeta
from hqm.zoo import convert_state_dict, detect_format, load_weights, safe_torch_load
from hqm.zoo.classes import dataset_object_names
from hqm.zoo.rename import load_partial
from hqm.zoo.safe_load import CheckpointError, UnsafeCheckpointError
from test_mining_train import RUNS
from test_zoo import DETR_OVERRIDES, _save, detr_state_dict


def _hotr(extra=(), seed=0):
    torch.manual_seed(seed)
    cfg = tiny_detector_cfg("hotr", list(extra))
    return cfg, build_model(cfg, NUM_OBJ, NUM_VERB)


def test_pointers_are_cosine_similarities_over_tau(batch):
    images, masks, _ = batch
    cfg, model = _hotr(["model.hotr.tau=0.2"])
    out = model.eval()(images, masks)
    ni, nh = cfg.model.num_queries, cfg.model.hotr.num_hoi_queries
    assert out["pred_hidx"].shape == out["pred_oidx"].shape == (2, nh, ni)
    assert out["pred_actions"].shape == (2, nh, NUM_VERB + 1)
    assert out["pred_logits"].shape == (2, ni, NUM_OBJ + 1) and out["pred_boxes"].shape == (2, ni, 4)
    assert out["pred_hidx"].abs().max() <= 1 / 0.2 + 1e-5  # |cos| <= 1
    o = out["pred_oidx"].argmax(-1)
    assert torch.equal(out["pred_obj_boxes"], out["pred_boxes"][torch.arange(2)[:, None], o])
    assert len(out["inst_aux_outputs"]) == cfg.model.dec_layers - 1


def test_instance_set_is_computed_once_per_forward_for_every_group(batch):
    """Learnable, GBS and AMM groups point into the same instances: one instance-decoder call."""
    images, masks, targets = batch
    _, model = _hotr(["mining.strategy=pjl", "mining.amm.k=6"])
    calls = []
    model.detr.transformer.decoder.register_forward_hook(lambda *a: calls.append(1))
    out = model.train()(images, masks, targets, mining=("gbs", "amm"))
    assert len(calls) == 1 and set(out["groups"]) == {"gbs", "amm"}
    for g in out["groups"].values():
        assert torch.equal(g.outputs["pred_logits"], out["pred_logits"])


def test_pointer_matcher_batch_equals_single_and_handles_empty_targets(batch):
    images, masks, targets = batch
    cfg, model = _hotr()
    out = model.eval()(images, masks)
    matcher = build_matcher(cfg)
    both = matcher(out, targets)
    for i in range(2):
        single_out = {k: v[i : i + 1] for k, v in out.items() if torch.is_tensor(v)}
        single = matcher(single_out, [targets[i]])
        assert torch.equal(both[i][0], single[0][0]) and torch.equal(both[i][1], single[0][1])
        assert len(both[i][0]) == len(targets[i]["obj_labels"])
    idx = matcher(out, [make_target(0), make_target(2)])
    assert len(idx[0][0]) == 0 and len(idx[1][0]) == 2
    crit = build_criterion(cfg, NUM_OBJ)
    loss, logs = crit(out, [make_target(0), make_target(0)])
    assert torch.isfinite(loss) and logs["loss_hidx"] == 0 and logs["inst/loss_sub_bbox"] == 0


def test_pointer_targets_follow_the_instance_assignment_and_objectless_roles_point_at_the_human():
    t = make_target(2, has_obj=[True, False])  # instances: 2 humans, 1 object
    q = torch.tensor([5, 1, 3])
    k = torch.tensor([2, 0, 1])  # GT instance 2 <- query 5, 0 <- 1, 1 <- 3
    (p,) = pointer_targets([t], [(q, k)])
    assert p["sub_ptr"].tolist() == [1, 3]
    assert p["obj_ptr"].tolist() == [5, 3]  # the object-less role points at its human's query
    (p,) = pointer_targets([t], [(torch.tensor([1]), torch.tensor([0]))])
    assert p["sub_ptr"].tolist() == [1, -1] and p["obj_ptr"].tolist() == [-1, -1]


def test_pointer_cost_prefers_the_query_pointing_at_the_right_instances():
    cfg, _ = _hotr()
    matcher = build_matcher(cfg)
    t = dict(make_target(1), sub_ptr=torch.tensor([2]), obj_ptr=torch.tensor([0]))
    hidx = torch.zeros(1, 3, 4)
    oidx = torch.zeros(1, 3, 4)
    hidx[0, 1, 2] = oidx[0, 1, 0] = 10.0  # query 1 points at instance 2 (human) and 0 (object)
    out = {"pred_hidx": hidx, "pred_oidx": oidx, "pred_verb_logits": torch.zeros(1, 3, NUM_VERB)}
    assert matcher(out, [t])[0][0].tolist() == [1]


def test_gbs_queries_are_supervised_with_the_matched_instances_pointers(batch):
    images, masks, targets = batch
    cfg, model = _hotr(["mining.strategy=gbs"])
    crit = build_criterion(cfg, NUM_OBJ)
    out = model.train()(images, masks, targets, mining=("gbs",))
    g = out["groups"]["gbs"]
    assert g.outputs["pred_hidx"].shape[1] == max(len(t["obj_labels"]) for t in targets)
    loss, logs = crit(out, targets, 1.0, {"gbs": 1.0})
    for k in ("gbs/loss_hidx", "gbs/loss_oidx", "gbs/loss_act", "inst/loss_obj_ce"):
        assert torch.isfinite(logs[k]) and logs[k] > 0, k
    loss.backward()
    assert model.miners["gbs"].query_embed_sp[0].weight.grad.abs().sum() > 0


def test_amm_masks_only_the_interaction_decoder(batch, masking_reference):
    images, masks, targets = batch
    _, model = _hotr(["mining.strategy=amm", "mining.amm.k=6"])
    model.train()(images, masks, targets, mining=("amm",))
    ref = masking_reference["reference"]
    assert sorted(ref) == list(model.mining_layers) == [0, 1]
    assert ref[0].shape[2] == model.num_queries


@pytest.mark.parametrize("run", [r for r in RUNS if "query_type" not in " ".join(RUNS[r])])
def test_every_mining_variant_trains_on_hotr(run, batch):
    strategy = run.split("-")[0]
    extra = [x for x in RUNS[run] if "obj_box_norm" not in x]
    cfg, model = _hotr([f"mining.strategy={strategy}", "mining.amm.k=6", *extra])
    crit = build_criterion(cfg, NUM_OBJ)
    for out, logs in mining_steps(cfg, model, crit, batch):
        for group in out.get("groups", {}):
            assert f"{group}/loss_act" in logs
    grads = [p.grad for p in model.interaction_transformer.decoder.parameters()]
    assert any(g is not None and g.abs().sum() > 0 for g in grads)


def _meta(no_object: bool) -> DatasetMeta:
    objs = [f"o{i}" for i in range(NUM_OBJ)]
    return DatasetMeta(
        "toy",
        objs,
        [f"v{i}" for i in range(NUM_VERB)],
        np.ones((NUM_VERB, NUM_OBJ), bool),
        no_object_class=NUM_OBJ - 1 if no_object else None,
    )


def test_postprocess_takes_pair_boxes_and_classes_from_the_pointed_instances():
    big = 20.0
    logits = torch.full((1, 3, NUM_OBJ + 1), -big)
    logits[0, 0, 0] = logits[0, 1, 2] = logits[0, 2, 0] = big  # person, class 2, person
    boxes = torch.tensor([[[0.2, 0.2, 0.2, 0.2], [0.6, 0.6, 0.2, 0.2], [0.5, 0.5, 0.4, 0.4]]])
    hidx = torch.full((1, 2, 3), -big)
    oidx = torch.full((1, 2, 3), -big)
    hidx[0, 0, 0] = oidx[0, 0, 1] = big  # query 0: human 0 -> object 1
    hidx[0, 1, 2] = oidx[0, 1, 2] = big  # query 1: human 2 -> itself (no object on V-COCO)
    actions = torch.full((1, 2, NUM_VERB + 1), -big)
    actions[0, 0, 3] = actions[0, 1, 1] = big
    out = {"pred_logits": logits, "pred_boxes": boxes, "pred_hidx": hidx, "pred_oidx": oidx}
    out["pred_actions"] = actions
    size = torch.tensor([[100, 200]])
    pp = PostProcessHOTR(_meta(no_object=True), max_dets=2)
    (p,) = pp(out, size, ["a.jpg"])
    assert p.verb_labels.tolist() == [3, 1] and np.allclose(p.scores, 1.0, atol=1e-4)
    np.testing.assert_allclose(p.sub_boxes[0], [20, 10, 60, 30], atol=1e-3)
    np.testing.assert_allclose(p.obj_boxes[0], [100, 50, 140, 70], atol=1e-3)
    assert p.obj_labels.tolist() == [2, NUM_OBJ - 1] and (p.obj_boxes[1] == 0).all()
    (p,) = PostProcessHOTR(_meta(no_object=False), max_dets=2)(out, size, ["a.jpg"])
    assert p.obj_labels.tolist() == [2, 0]  # HICO-DET: a person object, not "no object"


@pytest.mark.parametrize(
    "override, key",
    [
        ("model.hotr.tau=0", "model.hotr.tau"),
        ("model.hotr.num_hoi_queries=0", "model.hotr.num_hoi_queries"),
        ("model.hotr.interaction_layers=0", "model.hotr.interaction_layers"),
        ("model.hotr.act_focal_alpha=1.5", "model.hotr.act_focal_alpha"),
        ("model.hotr.temperature=0.1", "model.hotr.temperature"),
        ("model.box_refine=true", "model.box_refine"),  # not the QPIC advice to set a query_type
        ("model.query_type=gaussian", "model.query_type"),
        ("loss.reweight.verb=true", "loss.reweight"),  # refused before any run folder exists
    ],
)
def test_bad_hotr_config_values_give_one_clear_line(override, key):
    with pytest.raises(ConfigError) as e:
        tiny_detector_cfg("hotr", [override])
    assert key in str(e.value) and "\n" not in str(e.value)
    assert "conditional or gaussian" not in str(e.value)  # no advice that HOTR would refuse next


# -- checkpoints -----------------------------------------------------------------------------------


def hotr_released_state_dict(d: int = 32, hoi_queries: int = 6, verbs: int = NUM_VERB) -> dict:
    """kakaobrain/HOTR's published layout (names and shapes from hotr/models/hotr.py, detr.py) for the
    tiny config: a complete DETR under ``detr.``, the shared encoder saved a second time under
    ``interaction_transformer.encoder``, the interaction decoder, queries, pointers and actions."""
    detr = detr_state_dict(queries=8)
    sd = {f"detr.{k}": v for k, v in detr.items()}
    for k, v in detr.items():
        if k.startswith("transformer.encoder."):
            sd[f"interaction_transformer.{k[len('transformer.') :]}"] = v
        if k.startswith("transformer.decoder."):
            sd[f"interaction_transformer.{k[len('transformer.') :]}"] = v + 1
    g = torch.Generator().manual_seed(1)
    sd["query_embed.weight"] = torch.randn(hoi_queries, d, generator=g)
    for head in ("H_Pointer_embed", "O_Pointer_embed"):
        for i in range(3):
            sd[f"{head}.layers.{i}.weight"] = torch.randn(d, d, generator=g)
            sd[f"{head}.layers.{i}.bias"] = torch.randn(d, generator=g)
    sd["action_embed.weight"] = torch.randn(verbs + 1, d, generator=g)
    sd["action_embed.bias"] = torch.randn(verbs + 1, generator=g)
    return sd


def _hotr_for_weights(extra=()):
    cfg = load_config(None, DETR_OVERRIDES + DETECTOR_OVERRIDES["hotr"] + list(extra))
    return build_model(cfg, 80, NUM_VERB)


def _save_with_args(state, path, **args):
    torch.save({"model": state, "args": argparse.Namespace(**args)}, path)
    return path


def test_released_hotr_weights_load_with_a_complete_report(tmp_path):
    """Every model key comes from the file, the duplicated encoder is reported as such, nothing is
    left random; the V-COCO file's numpy ``args`` load through the allow-list."""
    model = _hotr_for_weights(["model.hotr.tau=0.05"])
    state = hotr_released_state_dict()
    path = _save_with_args(
        state, tmp_path / "vcoco_q16.pth", temperature=0.05, valid_ids=np.array([1, 2, 3]), ratio=np.ones(2)
    )
    assert detect_format(state, "hotr") == "hotr"
    names = dataset_object_names("hico_det")
    report = load_weights(model, path, object_names=names, detector="hotr")
    own = model.state_dict()
    assert set(report.loaded) == set(own) and report.fresh == []
    assert sorted(e.split(":")[0] for e in report.ignored) == sorted(
        k for k in state if k.startswith("interaction_transformer.encoder.")
    )
    for k in ("query_embed.weight", "H_Pointer_embed.layers.2.weight", "action_embed.bias"):
        assert torch.equal(own[k], state[k])
    assert torch.equal(
        own["detr.transformer.encoder.layers.0.linear1.weight"],
        state["detr.transformer.encoder.layers.0.linear1.weight"],
    )
    k = "interaction_transformer.decoder.layers.1.multihead_attn.in_proj_weight"
    assert torch.equal(own[k], state[k])
    assert torch.equal(own["detr.class_embed.weight"][0], state["detr.class_embed.weight"][1])  # person


@pytest.mark.parametrize("already_read", [False, True])  # True: as hqm eval / predict / the API load
def test_hotr_temperature_must_match_the_checkpoint_args(tmp_path, already_read):
    from hqm.zoo import read_state_dict

    path = _save_with_args(hotr_released_state_dict(), tmp_path / "hico_q16.pth", temperature=0.2)
    model = _hotr_for_weights(["model.hotr.tau=0.05"])
    checkpoint = read_state_dict(path) if already_read else None
    with pytest.raises(CheckpointError) as e:
        load_weights(
            model, path, object_names=dataset_object_names("hico_det"), detector="hotr", checkpoint=checkpoint
        )
    msg = str(e.value)
    assert "0.2" in msg and "0.05" in msg and "model.hotr.tau" in msg and "\n" not in msg


def test_numpy_allow_list_is_exactly_the_array_reconstruction(tmp_path):
    ok = tmp_path / "ok.pth"
    torch.save({"args": argparse.Namespace(a=np.arange(3, dtype=np.int64), b=np.zeros(2, np.float32))}, ok)
    args = safe_torch_load(ok)["args"]
    assert args.a.tolist() == [0, 1, 2] and args.b.dtype == np.float32
    bad = tmp_path / "bad.pth"
    torch.save({"args": argparse.Namespace(rng=np.random.default_rng(0))}, bad)
    with pytest.raises(UnsafeCheckpointError, match="numpy.random"):
        safe_torch_load(bad)


@pytest.mark.parametrize("init", ["published", "fresh"])
def test_detr_to_hotr_initialisations(init, tmp_path):
    detr = detr_state_dict(queries=8)
    names = dataset_object_names("hico_det")
    converted, _ = convert_state_dict(detr, "hotr", object_names=names, init=init)
    model = _hotr_for_weights()
    report = load_partial(model, converted)
    fresh = {e.split(":")[0].split(".")[0] for e in report.fresh}
    inter_fresh = any(e.startswith("interaction_transformer.decoder.") for e in report.fresh)
    assert inter_fresh == (init == "fresh")
    assert fresh <= {
        "query_embed",
        "H_Pointer_embed",
        "O_Pointer_embed",
        "action_embed",
        "interaction_transformer",
    }
    assert not any(e.startswith("detr.") for e in report.fresh)
    own = model.state_dict()
    assert torch.equal(own["detr.transformer.decoder.norm.weight"], detr["transformer.decoder.norm.weight"])
    if init == "published":
        k = "layers.1.multihead_attn.in_proj_weight"
        assert torch.equal(own[f"interaction_transformer.decoder.{k}"], detr[f"transformer.decoder.{k}"])
    # the CLI: hqm convert detr-to-hoi --detector hotr
    from hqm.cli import main

    src = _save(detr, "detr-r18.pth")
    out = tmp_path / f"{init}.pt"
    assert main(["convert", "detr-to-hoi", src, str(out), "--detector", "hotr", "--init", init]) == 0
    assert safe_torch_load(out)["converted"]["detector"] == "hotr"
    # ... and the written file is a model.pretrained: the DETR part loads, the HOTR heads start fresh
    from hqm.zoo.convert import load_into_model

    again = load_into_model(_hotr_for_weights(), out, "hotr", names)
    assert not any(e.startswith("detr.") for e in again.fresh)
    assert {e.split(":")[0].split(".")[0] for e in again.fresh} <= fresh | {"interaction_transformer"}


def test_other_detectors_weights_are_refused_by_hotr():
    with pytest.raises(CheckpointError, match="model.detector"):
        detect_format({"obj_class_embed.weight": torch.zeros(1)}, "hotr")


def test_hotr_trains_with_detr_frozen():
    cfg = tiny_detector_cfg(
        "hotr",
        [
            "train.trainable=[query_embed,interaction_transformer,H_Pointer_embed,O_Pointer_embed,action_embed]"
        ],
    )
    model = build_model(cfg, NUM_OBJ, NUM_VERB)
    freeze_except(model, cfg.train.trainable)
    assert not any(p.requires_grad for p in model.detr.parameters())
    assert all(p.requires_grad for p in model.interaction_transformer.parameters())


def test_hotr_weights_given_to_another_detector_name_the_file_and_the_detector(tmp_path):
    """Loading hqm HOTR weights with model.detector=qpic: one line naming the file and hotr."""
    model = _hotr_for_weights()
    path = tmp_path / "hotr_weights.pth"
    torch.save({"model": model.state_dict()}, path)
    qpic = build_model(load_config(None, DETR_OVERRIDES), 80, NUM_VERB)
    with pytest.raises(CheckpointError) as e:
        load_weights(qpic, path, object_names=dataset_object_names("hico_det"), detector="qpic")
    msg = str(e.value)
    assert str(path) in msg and "model.detector=hotr" in msg and "\n" not in msg


@pytest.mark.parametrize(
    "detector, override, key",
    [
        ("hotr", "model.cdn.interaction_layers=4", "model.cdn.interaction_layers"),
        ("hotr", "loss.verb_focal_alpha=0.5", "model.hotr.act_focal_alpha"),
        ("qpic", "model.hotr.tau=0.5", "model.hotr.tau"),
        ("cdn", "model.hotr.num_hoi_queries=8", "model.hotr.num_hoi_queries"),
    ],
)
def test_another_detectors_options_are_refused_not_ignored(detector, override, key):
    with pytest.raises(ConfigError) as e:
        tiny_detector_cfg(detector, [override])
    assert key in str(e.value) and "\n" not in str(e.value)


def test_a_hotr_checkpoint_evaluated_as_another_detector_names_the_file(tmp_path):
    """hqm eval CKPT model.detector=qpic on HOTR weights: the refusal names the file and the detector it
    was trained as, not only the (checkpoint's own) HOTR keys."""
    from hqm.config import config_to_dict
    from hqm.zoo import resolve_model_config

    cfg = tiny_detector_cfg("hotr", ["model.hotr.tau=0.2"])
    path = tmp_path / "hotr_last.pt"
    with pytest.raises(ConfigError) as e:
        resolve_model_config({"config": config_to_dict(cfg)}, path, None, ["model.detector=qpic"])
    msg = str(e.value)
    assert str(path) in msg and "trained as model.detector=hotr" in msg and "\n" not in msg


def test_a_bad_override_value_for_a_checkpoint_leads_with_the_key_not_the_detector(tmp_path):
    """hqm eval CKPT data.test_scale=0: the key's own message comes first (a bad value, not a detector
    mismatch), then the file and its detector."""
    from hqm.config import config_to_dict
    from hqm.zoo import resolve_model_config

    cfg = tiny_detector_cfg("qpic")
    path = tmp_path / "last.pt"
    with pytest.raises(ConfigError) as e:
        resolve_model_config({"config": config_to_dict(cfg)}, path, None, ["data.test_scale=0"])
    msg = str(e.value)
    assert msg.startswith("data.test_scale=0 is out of range: it must be >= 1 (pixels)")
    assert msg.endswith(f"(overrides for {path}, trained as model.detector=qpic)") and "\n" not in msg


@pytest.mark.parametrize("name", ["hotr_r50_hico", "hotr_r50_vcoco", "hotr_r50_hico_hqm"])
def test_packaged_hotr_configs_freeze_as_configured(name):
    """hotr_r50_hico / _vcoco list ``miners`` in train.trainable (for their _hqm children) while they
    mine nothing: every run of them stopped at set-up ("names no parameter of this model: miners")."""
    small = ["model.backbone=resnet18", "model.hidden_dim=32", "model.dim_feedforward=32"]
    cfg = load_config(name, [*small, "model.enc_layers=1", "model.dec_layers=1", "model.pretrained="])
    model = build_model(cfg, 80, NUM_VERB)
    assert "miners" in cfg.train.trainable
    assert 0 < freeze_except(model, cfg.train.trainable) < sum(p.numel() for p in model.parameters())
    with pytest.raises(ConfigError, match="names no parameter of this model: nope"):
        freeze_except(model, [*cfg.train.trainable, "nope"])
