"""The model: placeholders, loss masking, save/load and batched generation."""
from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from molmini.data.processor import IGNORE_INDEX
from molmini.data.tokenizer import ASSISTANT, END, IMAGE_PATCH, PAD, USER
from molmini.model.vlm import MolminiModel
from tests.helpers import ROOT, make_records


def batch_of(model, records):
    return model.processor.collate([model.processor.process_record(r) for r in records])


def test_labels_cover_exactly_the_assistant_answers(tiny_model):
    proc = tiny_model.processor
    rec = make_records(1)[0]
    enc = proc.encode_conversation(rec.messages)
    ids, labels = enc["input_ids"], enc["labels"]
    assert len(ids) == len(labels)
    labelled = [t for t, l in zip(ids, labels) if l != IGNORE_INDEX]
    expected = []
    for msg in rec.messages[1::2]:
        expected += proc.tokenizer(msg["content"], add_special_tokens=False)["input_ids"] + [proc.ids[END]]
    assert labelled == expected
    # every labelled position is in an assistant span: it comes after <|assistant|> and before the next <|user|>
    role = None
    for t, l in zip(ids, labels):
        if t in (proc.ids[USER], proc.ids[ASSISTANT]):
            role = t
        if l != IGNORE_INDEX:
            assert role == proc.ids[ASSISTANT]


def test_loss_is_mean_over_answer_tokens_only(tiny_model):
    batch = batch_of(tiny_model, make_records(3))
    out = tiny_model(**batch)
    logits, labels = out["logits"][:, :-1], batch["labels"][:, 1:]
    keep = labels != IGNORE_INDEX
    manual = torch.nn.functional.cross_entropy(logits[keep], labels[keep])
    assert out["num_loss_tokens"] == keep.sum()
    torch.testing.assert_close(out["loss"], manual)
    # changing a question token changes the input but no loss target
    assert (labels[batch["input_ids"][:, 1:] == tiny_model.token_ids[USER]] == IGNORE_INDEX).all()


def test_image_features_land_exactly_on_placeholders(tiny_model):
    batch = batch_of(tiny_model, make_records(2))
    images = (batch["pixel_values"], batch["pad_fraction"], batch["pool_index"])
    embeds = tiny_model.embed(batch["input_ids"], *images)
    feats = tiny_model.image_features(*images)
    placeholder = batch["input_ids"] == tiny_model.token_ids[IMAGE_PATCH]
    assert placeholder.sum(1).tolist() == [feats.shape[0] // 2] * 2
    torch.testing.assert_close(embeds[placeholder], feats)
    text = tiny_model.lm.get_input_embeddings()(batch["input_ids"])
    torch.testing.assert_close(embeds[~placeholder], text[~placeholder])
    # image features differ per image and are not the placeholder embedding itself
    half = feats.shape[0] // 2
    assert not torch.allclose(feats[:half], feats[half:])


def test_wrong_number_of_placeholders_is_an_error(tiny_model):
    batch = batch_of(tiny_model, make_records(1))
    ids = batch["input_ids"].clone()
    ids[ids == tiny_model.token_ids[IMAGE_PATCH]] = tiny_model.token_ids[PAD]
    with pytest.raises(ValueError, match="placeholder"):
        tiny_model(ids, batch["attention_mask"], batch["pixel_values"], batch["pad_fraction"], batch["pool_index"])


def test_save_then_load_gives_identical_logits(tiny_model, tmp_path):
    batch = batch_of(tiny_model, make_records(2))
    tiny_model.save_pretrained(tmp_path / "ckpt")
    loaded = MolminiModel.from_pretrained(tmp_path / "ckpt")
    with torch.no_grad():
        a = tiny_model(**batch)["logits"]
        b = loaded(**batch)["logits"]
    assert torch.equal(a, b)
    assert (tmp_path / "ckpt" / "README.md").read_text().startswith("---\nlibrary_name: molmini")


def test_loading_a_folder_with_a_missing_file_names_it(tiny_model, tmp_path):
    tiny_model.save_pretrained(tmp_path / "ckpt")
    (tmp_path / "ckpt" / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        MolminiModel.from_pretrained(tmp_path / "ckpt")


def _trained(model, steps=60):
    """A few optimizer steps so greedy outputs are peaked, not near-ties of a random init."""
    torch.manual_seed(0)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    batch = batch_of(model, make_records(16))
    model.train()
    for _ in range(steps):
        model(**batch)["loss"].backward()
        opt.step()
        opt.zero_grad()
    return model.eval()


def test_batched_greedy_generation_equals_one_at_a_time(tiny_model):
    model = _trained(tiny_model)
    records = make_records(6, seed=3)
    images = [r.load_image() for r in records]
    prompts = ["What colour are the bars?", "How many bars are there?", "What colour are the bars?",
               "Describe it in many words please", "How many bars are there?", "colour?"]
    batched = model.generate(images, prompts, max_new_tokens=6, batch_size=6)
    single = [model.generate([im], [p], max_new_tokens=6)[0] for im, p in zip(images, prompts)]
    assert batched == single
    assert any(a in ("red", "blue", "green") for a in batched)  # it learned something to generate


def test_generation_uses_the_kv_cache_and_matches_full_recomputation(tiny_model):
    model = _trained(tiny_model, steps=20)
    batch = model.processor.prompt_batch([make_records(1)[0].load_image()], ["What colour are the bars?"])
    images = (batch["pixel_values"], batch["pad_fraction"], batch["pool_index"])
    new = model.generate_ids(batch["input_ids"], batch["attention_mask"], *images, max_new_tokens=4,
                             min_new_tokens=4)
    # recompute greedily without a cache: feed the whole prefix every step
    embeds = model.embed(batch["input_ids"], *images)
    mask = batch["attention_mask"]
    tokens = []
    with torch.no_grad():
        for _ in range(4):
            logits = model.lm(inputs_embeds=embeds, attention_mask=mask, use_cache=False).logits[:, -1]
            logits[:, model.token_ids[END]] = -float("inf")  # as min_new_tokens does
            nxt = logits.argmax(-1)
            tokens.append(int(nxt))
            embeds = torch.cat([embeds, model.lm.get_input_embeddings()(nxt)[:, None]], 1)
            mask = torch.cat([mask, torch.ones_like(mask[:, :1])], 1)
    assert new[0].tolist() == tokens


def test_beam_search_sampling_streaming_and_chat(tiny_model):
    model = _trained(tiny_model, steps=30)
    image = make_records(1)[0].load_image()
    greedy = model.generate([image], ["What colour are the bars?"], max_new_tokens=5)[0]
    assert model.generate([image], ["What colour are the bars?"], max_new_tokens=5, num_beams=3)[0] in \
        ("red", "blue", "green")
    torch.manual_seed(5)
    a = model.generate([image] * 4, ["What colour are the bars?"] * 4, max_new_tokens=5, do_sample=True,
                       temperature=1.5)
    torch.manual_seed(5)
    b = model.generate([image] * 4, ["What colour are the bars?"] * 4, max_new_tokens=5, do_sample=True,
                       temperature=1.5)
    assert a == b  # seeded sampling is reproducible
    pieces = list(model.stream(image, "What colour are the bars?", max_new_tokens=5))
    assert "".join(pieces).strip() == greedy
    assert model.chat(image, "What colour are the bars?", max_new_tokens=5) == greedy
    history = [{"role": "user", "content": "How many bars are there?"}, {"role": "assistant", "content": "3"}]
    prompt = model.processor.encode_prompt("What colour are the bars?", [model.processor.process_image(image)], history)
    text = model.processor.tokenizer.decode(prompt)
    assert text.index("How many bars") < text.index("3<|end|>") < text.index("What colour")
    assert isinstance(model.chat(image, "What colour are the bars?", history=history, max_new_tokens=5), str)


def test_load_in_bfloat16_on_a_chosen_device(tiny_model, tmp_path):
    tiny_model.save_pretrained(tmp_path / "ckpt")
    model = MolminiModel.from_pretrained(tmp_path / "ckpt", device="auto", dtype="bfloat16")
    assert model.lm.get_input_embeddings().weight.dtype == torch.bfloat16
    assert model.device.type == ("cuda" if torch.cuda.is_available() else "cpu")
    answers = model.generate([make_records(1)[0].load_image()], ["What colour are the bars?"], max_new_tokens=3)
    assert len(answers) == 1


def test_mismatched_or_broken_checkpoint_files_are_named(tiny_model, tmp_path, tokenizer):
    from tests.helpers import tiny_config
    folder = tiny_model.save_pretrained(tmp_path / "ckpt")
    for name in ("processor_config.json", "tokenizer_config.json", "config.json"):
        other = tiny_model.save_pretrained(tmp_path / f"missing-{name}")
        (other / name).unlink()
        with pytest.raises(FileNotFoundError, match=name):
            MolminiModel.from_pretrained(other)
    (folder / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="config.json"):
        MolminiModel.from_pretrained(folder)
    # weights of a differently shaped model: the error names both files
    bigger = MolminiModel(tiny_config("model.connector.mlp_hidden=96").model, tokenizer)
    bigger.save_pretrained(tmp_path / "bigger")
    good = tiny_model.save_pretrained(tmp_path / "good")
    (good / "model.safetensors").write_bytes((tmp_path / "bigger" / "model.safetensors").read_bytes())
    with pytest.raises(ValueError, match="model.safetensors does not match .*config.json"):
        MolminiModel.from_pretrained(good)
    (good / "model.safetensors").write_bytes(b"truncated")
    with pytest.raises(ValueError, match="model.safetensors"):
        MolminiModel.from_pretrained(good)


def test_generate_command_line_answers_from_a_checkpoint(tiny_model, tmp_path):
    import json
    model = _trained(tiny_model, steps=30)
    folder = model.save_pretrained(tmp_path / "ckpt")
    paths = []
    for i, r in enumerate(make_records(2, seed=5)):
        paths.append(tmp_path / f"chart{i}.png")
        paths[-1].write_bytes(r.image)
    expected = model.generate([r.load_image() for r in make_records(2, seed=5)], ["What colour are the bars?"] * 2,
                              max_new_tokens=5)
    cmd = [sys.executable, "-m", "molmini.cli", "generate", "--model", str(folder), "--image", *map(str, paths),
           "--prompt", "What colour are the bars?", "--max-new-tokens", "5", "--json", "--device", "cpu"]
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert out.returncode == 0, out.stderr
    rows = [json.loads(line) for line in out.stdout.splitlines()]
    assert [r["answer"] for r in rows] == expected
    assert rows[0]["image"] == str(paths[0])
    bad = subprocess.run(cmd[:7] + [str(tmp_path / "missing.png")] + cmd[9:], capture_output=True, text=True,
                         cwd=ROOT, timeout=120)
    assert bad.returncode == 2 and "missing.png" in bad.stderr


def test_the_recorded_prompt_template_is_molmini_s_own_layout_for_its_own_tokenizer(tokenizer):
    from molmini.data.chat_format import ChatFormat
    assert ChatFormat.from_tokenizer(tokenizer).prompt_template() == "<|user|><image>{question}<|end|><|assistant|>"


def test_the_sequence_budget_is_stored_once_and_the_saved_processor_is_the_one_used(tiny_model, tmp_path):
    import dataclasses
    import json

    from molmini.data.processor import MolminiProcessor
    folder = tiny_model.save_pretrained(tmp_path / "ckpt")
    assert "max_length" not in json.loads((folder / "config.json").read_text())
    saved = json.loads((folder / "processor_config.json").read_text())["max_length"]
    assert MolminiModel.from_pretrained(folder).processor.config.max_length == saved
    assert MolminiModel.from_pretrained(folder, max_length=77).processor.config.max_length == 77
    # a processor that does not fit the model (another crop size) is refused, not silently replaced
    wrong = MolminiProcessor.from_pretrained(folder)
    wrong.config = dataclasses.replace(wrong.config, image_size=wrong.config.image_size * 2)
    with pytest.raises(ValueError, match="does not fit the model.*image_size"):
        MolminiModel(tiny_model.config, wrong.tokenizer, load_pretrained=False, processor=wrong)


def test_a_generation_that_fails_while_streaming_raises_instead_of_hanging(tiny_model):
    image = make_records(1)[0].load_image()
    with pytest.raises(ValueError, match="beam"):  # transformers refuses a streamer with beam search, in the thread
        list(tiny_model.stream(image, "What colour are the bars?", max_new_tokens=3, num_beams=2))
