"""Padding, packing (incl. equality of packed and separate forwards), pair/KTO layouts, sampling."""

from __future__ import annotations

import pytest
import torch

from repulse.data.collate import (
    MicroBatcher,
    batches,
    kto_collate,
    pack_collate,
    packed_attention_mask,
    pad_collate,
    preference_collate,
    prompt_collate,
)

ITEMS = [
    {"input_ids": [1, 5, 6, 7, 8], "loss_mask": [0, 0, 0, 1, 1], "label": True, "margin": 0.5},
    {"input_ids": [1, 9, 10], "loss_mask": [0, 1, 1], "label": False, "margin": 1.0},
    {"input_ids": [1, 11, 12, 13], "loss_mask": [1, 0, 1, 1], "label": True, "margin": 0.0},
]


def test_pad_collate():
    b = pad_collate(ITEMS, pad_id=0)
    assert b["input_ids"].tolist() == [[1, 5, 6, 7, 8], [1, 9, 10, 0, 0], [1, 11, 12, 13, 0]]
    assert b["attention_mask"].tolist() == [[1] * 5, [1, 1, 1, 0, 0], [1, 1, 1, 1, 0]]
    assert b["loss_mask"].tolist() == [[0, 0, 0, 1, 1], [0, 1, 1, 0, 0], [1, 0, 1, 1, 0]]
    assert b["label"].dtype == torch.bool and b["label"].tolist() == [True, False, True]
    assert b["margin"].dtype == torch.float32 and b["margin"].tolist() == [0.5, 1.0, 0.0]
    assert set(pad_collate(ITEMS, 0, keys=["loss_mask"])) == {"input_ids", "attention_mask", "loss_mask"}


def test_pack_collate():
    b = pack_collate(ITEMS, pad_id=0)
    assert "attention_mask" not in b
    assert b["input_ids"].tolist() == [[1, 5, 6, 7, 8, 1, 9, 10, 1, 11, 12, 13]]
    assert b["position_ids"].tolist() == [[0, 1, 2, 3, 4, 0, 1, 2, 0, 1, 2, 3]]
    # the first token of every sample is never trained (no prediction across a boundary)
    assert b["loss_mask"].tolist() == [[0, 0, 0, 1, 1, 0, 1, 1, 0, 0, 1, 1]]
    assert b["seq_lens"].tolist() == [5, 3, 4]
    assert b["label"].tolist() == [True, False, True]


def tiny_llama(impl: str):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=128,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        attn_implementation=impl,
    )
    return LlamaForCausalLM(cfg).eval()


@pytest.mark.parametrize("impl", ["sdpa", "eager"])
def test_packed_forward_equals_separate_forwards(impl):
    model = tiny_llama(impl)
    gen = torch.Generator().manual_seed(1)
    items = [
        {"input_ids": torch.randint(0, 128, (n,), generator=gen).tolist(), "loss_mask": [0] + [1] * (n - 1)}
        for n in (6, 3, 9, 1, 5)
    ]
    with torch.no_grad():
        separate = torch.cat([model(input_ids=torch.tensor([it["input_ids"]])).logits[0] for it in items])
        packed = pack_collate(items, pad_id=0)
        # what the trainer must do: no attention_mask, restarting position_ids, and no KV cache
        logits = model(
            input_ids=packed["input_ids"], position_ids=packed["position_ids"], use_cache=False
        ).logits[0]
        torch.testing.assert_close(logits, separate, atol=1e-5, rtol=0)
        # the explicit 4-D mask works even with the default use_cache
        mask = packed_attention_mask(packed["seq_lens"], torch.float32)
        logits4d = model(
            input_ids=packed["input_ids"], position_ids=packed["position_ids"], attention_mask=mask
        ).logits[0]
        torch.testing.assert_close(logits4d, separate, atol=1e-5, rtol=0)
        # and right padding with the padded attention mask gives the same logits on real tokens
        padded = pad_collate(items, pad_id=0)
        out = model(input_ids=padded["input_ids"], attention_mask=padded["attention_mask"]).logits
        real = out[padded["attention_mask"].bool()]
        torch.testing.assert_close(real, separate, atol=1e-5, rtol=0)


def test_prm_dense_fields():
    items = [
        {"input_ids": [1, 2, 3, 4], "step_positions": [1, 3], "step_labels": [0, 1]},
        {"input_ids": [1, 2, 3], "step_positions": [2], "step_labels": [1]},
    ]
    b = pad_collate(items, 0)
    assert b["step_mask"].tolist() == [[False, True, False, True], [False, False, True, False]]
    assert b["step_labels"].tolist() == [[-100, 0, -100, 1], [-100, -100, 1, -100]]
    soft = [items[0], {"input_ids": [1, 2], "step_positions": [1], "step_labels": [0.25]}]
    p = pack_collate(soft, 0)
    assert p["step_mask"].tolist() == [[False, True, False, True, False, True]]
    assert p["step_labels"].tolist() == [[0.0, 1.0, 0.0, 0.0, 0.0, 0.25]]


def test_preference_collate():
    items = [
        {
            "chosen_ids": [1, 2, 3],
            "chosen_mask": [0, 1, 1],
            "rejected_ids": [1, 4],
            "rejected_mask": [0, 1],
            "margin": 1.0,
        },
        {
            "chosen_ids": [1, 5],
            "chosen_mask": [0, 1],
            "rejected_ids": [1, 6, 7, 8],
            "rejected_mask": [0, 0, 1, 1],
            "margin": 0.0,
        },
    ]
    b = preference_collate(items, pad_id=0)
    assert b["input_ids"].tolist() == [[1, 2, 3, 0], [1, 5, 0, 0], [1, 4, 0, 0], [1, 6, 7, 8]]
    assert b["loss_mask"].tolist() == [[0, 1, 1, 0], [0, 1, 0, 0], [0, 1, 0, 0], [0, 0, 1, 1]]
    assert b["margin"].tolist() == [1.0, 0.0]
    p = preference_collate(items, pad_id=0, packing=True)
    assert p["input_ids"].tolist() == [[1, 2, 3, 1, 5, 1, 4, 1, 6, 7, 8]]
    assert p["seq_lens"].tolist() == [3, 2, 2, 4]


def test_kto_collate_mismatched_pairs():
    items = [
        {"input_ids": [1, 10, 11, 20, 21], "loss_mask": [0, 0, 0, 1, 1], "label": True},
        {"input_ids": [1, 12, 22], "loss_mask": [0, 0, 1], "label": False},
        {"input_ids": [1, 13, 14, 15, 23], "loss_mask": [0, 0, 0, 0, 1], "label": True},
    ]
    b = kto_collate(items, pad_id=0)
    assert b["label"].tolist() == [True, False, True]
    kl = [row[m.bool()].tolist() for row, m in zip(b["kl_input_ids"], b["kl_attention_mask"])]
    assert kl == [[1, 10, 11, 22], [1, 12, 23], [1, 13, 14, 15, 20, 21]]
    trained = [row[m.bool()].tolist() for row, m in zip(b["kl_input_ids"], b["kl_loss_mask"])]
    assert trained == [[22], [23], [20, 21]]
    p = kto_collate(items, pad_id=0, packing=True)
    assert p["kl_seq_lens"].tolist() == [4, 3, 6] and "kl_position_ids" in p


def test_prompt_collate_left_pads():
    items = [
        {"prompt_ids": [1, 2, 3], "prompt": "a", "label": 1},
        {"prompt_ids": [1, 4], "prompt": "b", "label": None},
    ]
    b = prompt_collate(items, pad_id=0)
    assert b["input_ids"].tolist() == [[1, 2, 3], [0, 1, 4]]
    assert b["attention_mask"].tolist() == [[1, 1, 1], [0, 1, 1]]
    assert b["prompts"] == ["a", "b"] and b["labels"] == [1, None]


# --------------------------------------------------------------------------- sampling


def test_rank_shards_are_disjoint_and_cover_each_global_batch():
    n, micro, world, gbs = 50, 2, 3, 12
    per_rank = [
        list(MicroBatcher(n, micro, gbs, seed=7, rank=r, world_size=world).iter_epoch(0))
        for r in range(world)
    ]
    steps = n // gbs
    order = MicroBatcher(n, micro, gbs, seed=7).order(0)
    mbs_per_step = gbs // world // micro
    for s in range(steps):
        got = []
        for r in range(world):
            mine = [i for mb in per_rank[r][s * mbs_per_step : (s + 1) * mbs_per_step] for i in mb]
            assert len(mine) == gbs // world
            got.append(set(mine))
        assert all(not (got[a] & got[b]) for a in range(world) for b in range(a + 1, world))
        assert set().union(*got) == set(order[s * gbs : (s + 1) * gbs])
    assert all(len(mb) == micro for r in range(world) for mb in per_rank[r])
    assert sum(len(mb) for r in range(world) for mb in per_rank[r]) == steps * gbs  # tail of 2 dropped


def test_shuffle_is_deterministic_per_epoch():
    a = MicroBatcher(20, 4, seed=3)
    assert a.order(0) == MicroBatcher(20, 4, seed=3).order(0)
    assert a.order(0) != a.order(1)
    assert sorted(a.order(1)) == list(range(20))
    assert MicroBatcher(20, 4, shuffle=False).order(5) == list(range(20))


def test_resume_from_position_yields_the_same_batches():
    data = [{"input_ids": [i], "loss_mask": [0]} for i in range(40)]
    kw = dict(micro_batch_size=2, batch_size=8, seed=11, epoch=2, rank=1, world_size=2)
    full = list(batches(data, **kw))
    resumed = list(batches(data, start_index=16, **kw))
    assert resumed == full[len(full) - len(resumed) :] and len(resumed) == len(full) - 4
    with pytest.raises(ValueError):
        list(batches(data, start_index=3, **kw))
    collated = list(batches(data, collate=lambda xs: pad_collate(xs, 0), **kw))
    assert collated[0]["input_ids"].tolist() == [[x["input_ids"][0]] for x in full[0]]


def test_batch_size_must_divide():
    from repulse.errors import UserError

    with pytest.raises(UserError, match="--train.batch_size"):
        MicroBatcher(10, micro_batch_size=3, batch_size=8, world_size=1)


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("capacity", [None, 16])
def test_shared_prompt_rows_score_as_separate_sequences(toy, arch, attn, capacity):
    """``shared_prompt_collate``: each pair in one row holding the common prefix once gives every
    chosen and rejected token the log-prob (and the reward model its score at the last token)
    that the sequence alone gives. Pairs that share the prompt, a prompt and response tokens,
    and nothing but the first token; unequal lengths (padding)."""
    from transformers import AutoModelForCausalLM

    from repulse.data.collate import shared_prompt_collate
    from repulse.models.logprobs import token_logprobs_from_model
    from repulse.trainers.dpo import shared_prompt_logps

    model = AutoModelForCausalLM.from_pretrained(getattr(toy, arch), attn_implementation=attn).eval()
    pairs = [
        ([1, 30, 31, 32, 33, 34], [1, 30, 31, 32, 40]),  # prompt 1..32, then different
        ([1, 30, 31, 50, 51, 52, 53], [1, 30, 31, 50, 51, 60]),  # response shares 50, 51
        ([1, 70], [1, 71, 72, 73]),  # only the first token in common
    ]
    items = []
    for c, r in pairs:
        items.append({"chosen_ids": c, "chosen_mask": [0, 0] + [1] * (len(c) - 2),
                      "rejected_ids": r, "rejected_mask": [0, 0] + [1] * (len(r) - 2)})  # fmt: skip
    batch = shared_prompt_collate(items, pad_id=0, capacity=capacity)
    seg_lens = [len(c) + len(r) - k for (c, r), k in zip(pairs, (4, 5, 1))]  # 7, 8, 5
    if capacity is None:  # one pair per row
        assert batch["input_ids"].shape == (3, max(seg_lens))
    else:  # packed, first-fit decreasing into rows of at most 16: (8 + 7) and (5) tokens
        assert batch["input_ids"].shape == (2, 15)
    with torch.no_grad():
        sums, counts = shared_prompt_logps(model, batch)
        for s, seq in enumerate([c for c, _ in pairs] + [r for _, r in pairs]):
            alone = token_logprobs_from_model(model, torch.tensor([seq]))[0]  # column t scores t+1
            mask = torch.tensor(items[s % 3]["chosen_mask" if s < 3 else "rejected_mask"])[1:].float()
            assert counts[s] == mask.sum()
            assert float(sums[s]) == pytest.approx(float((alone * mask).sum()), abs=1e-5), s
            row, col = batch["seq_last"][s].tolist()
            assert batch["input_ids"][row, col] == seq[-1]


@pytest.mark.parametrize("impl", ["sdpa", "eager"])
def test_packed_bins_forward_equals_separate_forwards(impl):
    """``pack_collate(capacity=C)``: rows of at most C tokens (first-fit decreasing), right padded;
    every real token's logits equal its sequence's alone (no attention across samples, none to
    the pads), every sample appears once, and pads train nothing."""
    from repulse.data.collate import pack_bins

    assert pack_bins([6, 3, 9, 1, 5], 10) == [[2, 3], [0, 1], [4]]
    model = tiny_llama(impl)
    gen = torch.Generator().manual_seed(2)
    lens = (6, 3, 9, 1, 5)
    items = [
        {"input_ids": torch.randint(1, 128, (n,), generator=gen).tolist(), "loss_mask": [0] + [1] * (n - 1),
         "step_positions": [n - 1], "step_labels": [i % 2]}
        for i, n in enumerate(lens)
    ]  # fmt: skip
    b = pack_collate(items, pad_id=0, capacity=10)
    assert b["input_ids"].shape == (3, 10) and "seq_lens" not in b
    assert int(b["loss_mask"].sum()) == sum(n - 1 for n in lens)
    assert int(b["step_mask"].sum()) == len(lens)
    with torch.no_grad():
        logits = model(input_ids=b["input_ids"], position_ids=b["position_ids"], use_cache=False).logits
        for row, members in enumerate(pack_bins(list(lens), 10)):
            col = 0
            for i in members:
                n = lens[i]
                assert b["input_ids"][row, col : col + n].tolist() == items[i]["input_ids"]
                alone = model(input_ids=torch.tensor([items[i]["input_ids"]])).logits[0]
                torch.testing.assert_close(logits[row, col : col + n], alone, atol=1e-5, rtol=0)
                col += n
            assert b["loss_mask"][row, col:].sum() == 0  # the pads
