from transformers import AutoTokenizer

from sam3_lora.model.tokenizer import VOCAB_SIZE, build_byte_tokenizer


def encode(tokenizer, texts):
    return tokenizer(texts, padding="max_length", max_length=32, truncation=True)["input_ids"]


def test_new_words_get_distinct_tokens():
    ids = encode(build_byte_tokenizer(), ["star", "hexagon", "triangle", "zzz-unseen"])
    assert len({tuple(row) for row in ids}) == 4
    assert all(i < VOCAB_SIZE for row in ids for i in row)
    assert 3 not in {i for row in ids for i in row}  # <unk> never needed


def test_lowercases_pads_and_keeps_eos_when_truncating():
    tokenizer = build_byte_tokenizer()
    assert encode(tokenizer, ["Red Circle"]) == encode(tokenizer, ["red circle"])
    row = encode(tokenizer, ["x" * 100])[0]
    assert len(row) == 32 and row[0] == tokenizer.bos_token_id and row[-1] == tokenizer.eos_token_id
    short = encode(tokenizer, ["ab"])[0]
    assert short[:4] == [tokenizer.bos_token_id, *tokenizer.convert_tokens_to_ids(["a", "b"]), tokenizer.eos_token_id]
    assert set(short[4:]) == {tokenizer.pad_token_id}


def test_round_trips_through_save_pretrained(tmp_path):
    tokenizer = build_byte_tokenizer()
    tokenizer.save_pretrained(tmp_path)
    reloaded = AutoTokenizer.from_pretrained(tmp_path)
    texts = ["red circle", "ünïcödé crack", "green hexagon"]
    assert encode(reloaded, texts) == encode(tokenizer, texts)
    assert reloaded.decode(encode(reloaded, ["ünïcödé"])[0], skip_special_tokens=True) == "ünïcödé"
