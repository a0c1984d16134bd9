"""The one place SAM3 runs: shared image encoding, cached text, auxiliary outputs."""

import torch

from sam3_lora.config import LoRAConfig, LossConfig
from sam3_lora.lora.apply import apply_lora_to_model
from sam3_lora.loss.criterion import build_criterion
from sam3_lora.model.forward import capture_aux_outputs, encode_images, encode_text, forward_queries


def tiny_targets(mask_size):
    masks = torch.zeros(2, mask_size, mask_size, dtype=torch.bool)
    masks[0, 4:12, 4:12] = masks[1, 20:30, 10:20] = True
    positive = {"boxes": torch.tensor([[0.25, 0.25, 0.25, 0.25], [0.5, 0.8, 0.3, 0.3]]), "masks": masks,
                "has_mask": torch.tensor([True, False]), "category_id": 1}
    negative = {"boxes": torch.zeros(0, 4), "masks": torch.zeros(0, mask_size, mask_size, dtype=torch.bool),
                "has_mask": torch.zeros(0, dtype=torch.bool), "category_id": 2}
    return [positive, negative]


def test_aux_outputs_of_the_tiny_model(tiny, tiny_inputs):
    model = tiny.model
    layers = model.config.detr_decoder_config.num_layers
    with capture_aux_outputs(model, include_last=True) as every:
        out = model(**tiny_inputs)
    # The recomputed last layer is exactly what the model returns.
    for key in ("pred_logits", "pred_boxes", "presence_logits"):
        assert torch.equal(every[-1][key], out[key])
    with capture_aux_outputs(model) as aux:
        model(**tiny_inputs)
    rows, queries = out.pred_logits.shape
    assert len(aux) == layers - 1 >= 1
    assert aux[0]["pred_boxes"].shape == (rows, queries, 4)
    assert aux[0]["pred_logits"].shape == (rows, queries) and aux[0]["presence_logits"].shape == (rows, 1)
    assert torch.equal(aux[0]["pred_boxes"], every[0]["pred_boxes"])
    assert not torch.equal(aux[0]["pred_boxes"], out.pred_boxes)
    # The hooks are gone after the block.
    model(**tiny_inputs)
    assert not model.detr_decoder._forward_hooks and not model.dot_product_scoring._forward_hooks


def test_loss_through_peft_reaches_lora_weights(tiny, tiny_inputs):
    lora = LoRAConfig(apply_to_detr_decoder=True, target_modules=["all"])
    model = apply_lora_to_model(tiny.model, lora, verbose=False)
    model.train()
    out = forward_queries(model, torch.arange(len(tiny_inputs["input_ids"])), aux_outputs=True, **tiny_inputs)
    assert len(out["aux_outputs"]) == tiny.model.config.detr_decoder_config.num_layers - 1
    losses = build_criterion(LossConfig())(out, tiny_targets(out["pred_masks"].shape[-1]))
    assert losses["loss_bbox"] > 0 and losses["loss_mask"] > 0 and "loss_bbox_aux_0" in losses

    # The aux terms alone reach the box head's LoRA: the hook goes through the adapted layers.
    aux_total = sum(v for k, v in losses.items() if "_aux_" in k)
    aux_total.backward(retain_graph=True)
    box_head = [p for n, p in model.named_parameters() if "box_head" in n and "lora_B" in n]
    assert box_head and any(p.grad is not None and p.grad.abs().sum() > 0 for p in box_head)

    model.zero_grad()
    losses["loss"].backward()
    lora_grads = [p.grad for n, p in model.named_parameters() if "lora_" in n]
    assert any(g is not None and g.abs().sum() > 0 for g in lora_grads)
    assert all(p.grad is None for n, p in model.named_parameters() if "lora_" not in n)


def test_one_encoding_serves_every_query_and_cached_text_matches(tiny, tiny_inputs):
    model = tiny.model
    with torch.no_grad():
        full = model(**tiny_inputs)
        # One image encoded once, both prompts on it; text given as cached features.
        vision = encode_images(model, tiny_inputs["pixel_values"][:1])
        features = encode_text(model, tiny_inputs["input_ids"], tiny_inputs["attention_mask"])
        shared = forward_queries(model, torch.zeros(2, dtype=torch.long), vision=vision, text_features=features,
                                 attention_mask=tiny_inputs["attention_mask"])
    for key in ("pred_logits", "pred_boxes", "pred_masks", "presence_logits"):
        assert torch.allclose(shared[key], full[key], atol=1e-6), key
    assert "aux_outputs" not in shared
