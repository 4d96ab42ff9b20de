"""cnnext.nn.MultiheadAttention against torch.nn.MultiheadAttention (masks in torch's convention,
batch_first or not, unbatched, separate key/value dims, the fallbacks), a torchvision
VisionTransformer converted by cnnext.nn.convert (eval outputs, training losses), and
SelfAttention2d's dropout."""

import pytest
import torch
import torchvision

import cnnext


def _pair(embed_dim=16, heads=4, seed=0, **kwargs):
    torch.manual_seed(seed)
    native = torch.nn.MultiheadAttention(embed_dim, heads, **kwargs).eval()
    return native, cnnext.nn.convert(native, inplace=False)


CASES = {
    "self, batch_first": (dict(batch_first=True), (2, 5, 16), (2, 5, 16)),
    "cross, sequence first": (dict(), (5, 2, 16), (7, 2, 16)),
    "unbatched": (dict(), (5, 16), (7, 16)),
    "separate key/value dims": (dict(kdim=12, vdim=10, batch_first=True), (2, 5, 16), (2, 7, None)),
    "no bias": (dict(bias=False, batch_first=True), (2, 5, 16), (2, 7, 16)),
}


@pytest.mark.parametrize(
    "mask", ["none", "bool attn_mask", "float attn_mask", "per-head", "key padding", "both"]
)
@pytest.mark.parametrize("config, q_shape, kv_shape", CASES.values(), ids=CASES.keys())
def test_matches_torch_multihead_attention(config, q_shape, kv_shape, mask):
    native, ours = _pair(**config)
    assert (
        type(ours) is cnnext.nn.MultiheadAttention and ours.state_dict().keys() == native.state_dict().keys()
    )
    g = torch.Generator().manual_seed(1)
    query = torch.randn(q_shape, generator=g)
    kdim, vdim = config.get("kdim", 16), config.get("vdim", 16)
    key = torch.randn(*kv_shape[:-1], kdim, generator=g)
    value = torch.randn(*kv_shape[:-1], vdim, generator=g)
    batched = len(q_shape) == 3
    n = (q_shape[0] if config.get("batch_first") else q_shape[1]) if batched else 1
    L = q_shape[1] if config.get("batch_first") else q_shape[0]
    S = key.shape[1] if config.get("batch_first") else key.shape[0]
    kwargs = {}
    if mask in ("bool attn_mask", "both"):
        kwargs["attn_mask"] = torch.rand(L, S, generator=g) > 0.7  # True: not allowed
    if mask == "float attn_mask":
        kwargs["attn_mask"] = torch.randn(L, S, generator=g)
    if mask == "per-head":
        kwargs["attn_mask"] = (
            torch.randn(n * 4, L, S, generator=g) if batched else torch.randn(4, L, S, generator=g)
        )
    if mask in ("key padding", "both"):
        padding = torch.zeros(n, S, dtype=torch.bool)
        padding[-1, -2:] = True
        kwargs["key_padding_mask"] = padding if batched else padding[0]
    want, _ = native(query, key, value, need_weights=False, **kwargs)
    got, weights = ours(query, key, value, need_weights=False, **kwargs)
    assert weights is None
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_runs_on_cnnext_and_falls_back_to_torch_where_it_must(monkeypatch):
    native, ours = _pair(batch_first=True)
    calls = []
    original = cnnext.ops.scaled_dot_product_attention
    monkeypatch.setattr(
        cnnext.ops, "scaled_dot_product_attention", lambda *a, **k: calls.append(1) or original(*a, **k)
    )
    x = torch.randn(2, 5, 16)
    ours(x, x, x, need_weights=False)
    assert calls == [1]
    # need_weights: torch's forward, which materialises the weights cnnext never does.
    out, weights = ours(x, x, x)
    want, want_weights = native(x, x, x)
    assert calls == [1] and weights is not None
    torch.testing.assert_close(out, want)
    torch.testing.assert_close(weights, want_weights)


def test_training_dropout_is_on_the_attention_weights():
    native, ours = _pair(dropout=0.5, batch_first=True)
    ours.train()
    x = torch.randn(2, 5, 16)
    torch.manual_seed(3)
    a, _ = ours(x, x, x, need_weights=False)
    torch.manual_seed(3)
    b, _ = ours(x, x, x, need_weights=False)
    torch.manual_seed(4)
    c, _ = ours(x, x, x, need_weights=False)
    assert torch.equal(a, b) and not torch.equal(a, c)
    ours.eval()
    torch.testing.assert_close(ours(x, x, x, need_weights=False)[0], native(x, x, x, need_weights=False)[0])


def _tiny_vit(seed=0):
    torch.manual_seed(seed)
    vit = torchvision.models.VisionTransformer(
        image_size=32, patch_size=8, num_layers=2, num_heads=2, hidden_dim=32, mlp_dim=64, num_classes=10
    )
    torch.nn.init.normal_(vit.heads.head.weight, std=0.1)  # torchvision starts it at zero
    return vit


def test_converted_vision_transformer_matches_in_eval_and_trains_alike():
    native = _tiny_vit()
    ours = cnnext.nn.convert(native, inplace=False)
    kinds = {type(m) for m in ours.modules()}
    assert cnnext.nn.MultiheadAttention in kinds and cnnext.nn.Conv2d in kinds
    assert torch.nn.MultiheadAttention not in kinds and torch.nn.Conv2d not in kinds
    assert ours.state_dict().keys() == native.state_dict().keys()
    x = torch.randn(8, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    labels = torch.randint(0, 10, (8,), generator=torch.Generator().manual_seed(2))
    native.eval(), ours.eval()
    with torch.no_grad():
        torch.testing.assert_close(ours(x), native(x), rtol=1e-4, atol=1e-5)
    # Training (dropout 0, torchvision's default): the same losses step by step.
    losses = {}
    for name, model in (("native", native), ("cnnext", ours)):
        model.train()
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        losses[name] = []
        for _ in range(5):
            loss = torch.nn.functional.cross_entropy(model(x), labels)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses[name].append(loss.item())
    assert losses["cnnext"] == pytest.approx(losses["native"], rel=1e-4)
    assert losses["cnnext"][-1] < losses["cnnext"][0]


def test_self_attention2d_dropout_applies_in_training_only():
    torch.manual_seed(0)
    block = cnnext.nn.SelfAttention2d(8, heads=2, dropout=0.5)
    with torch.no_grad():
        block.gate.fill_(1.0)
    x = torch.randn(2, 8, 4, 4)
    block.eval()
    assert torch.equal(block(x), block(x))
    block.train()
    torch.manual_seed(1)
    a = block(x)
    torch.manual_seed(2)
    assert not torch.equal(a, block(x))
    assert "dropout=0.5" in repr(block)
    with pytest.raises(ValueError, match="dropout must be in"):
        cnnext.nn.SelfAttention2d(8, dropout=1.5)
