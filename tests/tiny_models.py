"""Tiny random Hugging Face models built from a config: no download, built in milliseconds.

Every model has dropout off (so train/eval give the same numbers) and is in eval mode.
`build(name)` returns (model, info) where info says how to feed it:
    decoder         True for causal LMs (they generate); False for encoders (BERT, RoBERTa)
    left_padding    True when the model's logits are invariant to left padding given
                    `position_ids(mask)` (decoders) or by construction (RoBERTa)
    pad_id          the padding token id (never drawn by `random_ids`)
"""

from __future__ import annotations

import torch

# Tiny matmuls gain nothing from intra-op threads, and on a shared, loaded runner the
# threads' synchronisation costs ~1000x the math (24 ms vs 6 µs for a 27×32 @ 32×64 linear).
torch.set_num_threads(1)

VOCAB = 96
PAD_ID = 0
HIDDEN = 32
LAYERS = 3


def _configs():
    import transformers as tf

    common = {"vocab_size": VOCAB, "pad_token_id": PAD_ID, "bos_token_id": 1, "eos_token_id": 2}
    decoder = {"hidden_size": HIDDEN, "intermediate_size": 64, "num_hidden_layers": LAYERS,
               "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 64, **common}
    return {
        "gpt2": (tf.GPT2LMHeadModel, tf.GPT2Config(
            n_embd=HIDDEN, n_layer=LAYERS, n_head=4, n_positions=64, resid_pdrop=0.0, embd_pdrop=0.0,
            attn_pdrop=0.0, **common)),
        "llama": (tf.LlamaForCausalLM, tf.LlamaConfig(**decoder)),
        "qwen2": (tf.Qwen2ForCausalLM, tf.Qwen2Config(**decoder)),
        "mistral": (tf.MistralForCausalLM, tf.MistralConfig(sliding_window=None, **decoder)),
        "gemma3": (tf.Gemma3ForCausalLM, tf.Gemma3TextConfig(head_dim=8, sliding_window=8, **decoder)),
        "bert": (tf.BertForMaskedLM, tf.BertConfig(
            hidden_size=HIDDEN, intermediate_size=64, num_hidden_layers=LAYERS, num_attention_heads=4,
            max_position_embeddings=64, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
            vocab_size=VOCAB, pad_token_id=PAD_ID)),
        "roberta": (tf.RobertaForMaskedLM, tf.RobertaConfig(
            hidden_size=HIDDEN, intermediate_size=64, num_hidden_layers=LAYERS, num_attention_heads=4,
            max_position_embeddings=80, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
            vocab_size=VOCAB, pad_token_id=PAD_ID)),
    }


DECODERS = ("gpt2", "llama", "qwen2", "mistral", "gemma3")
ENCODERS = ("bert", "roberta")
ALL = DECODERS + ENCODERS


def build(name: str, *, seed: int = 0, dtype: torch.dtype = torch.float32, **overrides):
    """(model, info): a tiny random `name` model (one of ALL) in eval mode; `overrides` set
    config fields (e.g. hidden_size=48, num_hidden_layers=2)."""
    model_cls, config = _configs()[name]
    for key, value in overrides.items():
        setattr(config, key, value)
    config._name_or_path = f"tiny-random-{name}"
    torch.manual_seed(seed)
    model = model_cls(config).to(dtype).eval()
    info = {
        "decoder": name in DECODERS,
        # BERT's absolute positions count padding: its logits move under left padding.
        "left_padding": name != "bert",
        "pad_id": PAD_ID,
    }
    return model, info


def random_ids(lengths, *, seed: int = 0, side: str = "right", length: int | None = None):
    """(input_ids, attention_mask), both (B, L): row i has lengths[i] random tokens in [3, VOCAB),
    padded with PAD_ID on `side` up to `length` (default max(lengths))."""
    gen = torch.Generator().manual_seed(seed)
    L = length or max(lengths)
    ids = torch.full((len(lengths), L), PAD_ID, dtype=torch.long)
    mask = torch.zeros((len(lengths), L), dtype=torch.long)
    for i, n in enumerate(lengths):
        cols = slice(L - n, L) if side == "left" else slice(0, n)
        ids[i, cols] = torch.randint(3, VOCAB, (n,), generator=gen)
        mask[i, cols] = 1
    return ids, mask


def row_alone(ids, mask, i):
    """Row i of a padded batch without its padding: (1, n) ids and mask."""
    keep = mask[i].bool()
    return ids[i, keep][None], mask[i, keep][None]


def position_ids(mask):
    """Positions that count real tokens only, as HF generate makes them: (B, L)."""
    return (mask.long().cumsum(-1) - 1).clamp(min=0)


def model_inputs(info, ids, mask):
    """The forward kwargs for a padded batch: decoders get position_ids counting real tokens."""
    kwargs = {"input_ids": ids, "attention_mask": mask}
    if info["decoder"]:
        kwargs["position_ids"] = position_ids(mask)
    return kwargs


def train_steps(reft, ids, mask, steps: int = 3, lr: float = 1e-2) -> list[float]:
    """A few ReftOptimizer steps on a random-label cross-entropy; returns the losses."""
    from minireft.torch import ReftOptimizer

    opt = ReftOptimizer.for_named_parameters(reft.named_trainable_parameters(), lr=lr)
    labels = torch.randint(0, VOCAB, ids.shape, generator=torch.Generator().manual_seed(5)).to(ids.device)
    losses = []
    for _ in range(steps):
        logits = reft(input_ids=ids, attention_mask=mask).logits.float()
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses
