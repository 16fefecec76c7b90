"""Tokenizers built in code, for tiny models trained from scratch (tests, CPU demos).

No tokenizer can be downloaded on our machines; a character-level tokenizer over a fixed
alphabet trains nothing, builds in milliseconds and wraps as a ``PreTrainedTokenizerFast``
that ``generate``, ``batch_decode`` and ``save_pretrained`` treat like any other.
"""
from __future__ import annotations

DEFAULT_CHARS = "0123456789+-*/=()<>[]{}.,:;?!'\" \nabcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ_\\^"


def build_char_tokenizer(chars: str = DEFAULT_CHARS):
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = ["<pad>", "<eos>", "<unk>"]
    vocab = {tok: i for i, tok in enumerate(specials)}
    for ch in dict.fromkeys(chars):
        vocab.setdefault(ch, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    tok.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>", unk_token="<unk>")
