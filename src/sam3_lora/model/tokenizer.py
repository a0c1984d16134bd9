"""A byte-level tokenizer for the tiny SAM3 preset, built offline.

Real SAM3 checkpoints bring their CLIP tokenizer. The tiny preset needs one that exists
without a download, and it must give *new* words distinct tokens: a closed word vocabulary
maps every unseen concept ("star", "hexagon") to one unknown token, so a LoRA could never
learn to tell them apart. Bytes have no unknowns: every string, in any script, tokenizes.

It is a ``tokenizers`` byte-level BPE with no merges wrapped in ``PreTrainedTokenizerFast``,
so ``save_pretrained`` writes a ``tokenizer.json`` that ``AutoTokenizer.from_pretrained``
reads back with no sam3_lora code. Text is lower-cased, as CLIP does.
"""

from __future__ import annotations

from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast

PAD, BOS, EOS, UNK = "<pad>", "<s>", "</s>", "<unk>"
SPECIAL_TOKENS = [PAD, BOS, EOS, UNK]
VOCAB_SIZE = len(SPECIAL_TOKENS) + 256


def build_byte_tokenizer(max_length: int = 32) -> PreTrainedTokenizerFast:
    """A 260-token byte-level tokenizer: ids 0-3 are <pad> <s> </s> <unk>, then 256 bytes."""
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {token: index for index, token in enumerate(SPECIAL_TOKENS)}
    for symbol in sorted(alphabet):
        vocab[symbol] = len(vocab)
    core = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token=UNK))
    core.normalizer = normalizers.Lowercase()
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    core.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A {EOS}", special_tokens=[(BOS, vocab[BOS]), (EOS, vocab[EOS])]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=core,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        unk_token=UNK,
        model_max_length=max_length,
    )
