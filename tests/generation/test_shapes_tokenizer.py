from __future__ import annotations

from transformers import CLIPTokenizer

from generation.shapes.tokenizer import MAX_LENGTH, build_tokenizer, word_ids
from generation.shapes.world import prompt_captions, vocabulary


def test_every_world_word_has_its_own_id():
    tokenizer = build_tokenizer()
    ids = word_ids(tokenizer, vocabulary())
    assert all(len(v) == 1 for v in ids.values()), {w: v for w, v in ids.items() if len(v) != 1}
    flat = [v[0] for v in ids.values()]
    assert len(set(flat)) == len(flat)
    assert tokenizer.unk_token_id not in flat and tokenizer.bos_token_id not in flat


def test_captions_encode_to_one_token_per_word_within_max_length():
    tokenizer = build_tokenizer()
    for caption in prompt_captions(200, seed=0):
        ids = tokenizer(caption).input_ids
        assert len(ids) == len(caption.split()) + 2 <= MAX_LENGTH
        assert tokenizer.unk_token_id not in ids[1:-1]


def test_tokenizer_round_trips_through_save_pretrained(tmp_path):
    tokenizer = build_tokenizer()
    tokenizer.save_pretrained(tmp_path)
    loaded = CLIPTokenizer.from_pretrained(tmp_path)
    caption = prompt_captions(1, seed=3)[0]
    assert loaded(caption).input_ids == tokenizer(caption).input_ids
    assert loaded.decode(loaded(caption).input_ids, skip_special_tokens=True).strip() == caption
