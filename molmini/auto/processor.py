"""molmini's processor with transformers' calling convention, for `AutoProcessor` (molmini/auto/classes.py):
`apply_chat_template` renders a conversation in the model's chat format, `processor(images=..., text=...)` gives
the left-padded batch `MolminiForConditionalGeneration.generate` takes, and `batch_decode` reads its output.

The text a prompt is tokenized from is the conversation itself: a rendered prompt is cut back into its turns
and encoded piece by piece exactly as `MolminiModel.generate` encodes a question, so both give the same ids.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from transformers import ProcessorMixin

from molmini.data.chat_format import MOLMINI_CHAT_TEMPLATE
from molmini.data.images import SINGLE_IMAGE
from molmini.data.processor import PROCESSOR_CONFIG, MolminiProcessor
from molmini.data.records import IMAGE_MARKER
from molmini.hub.checkpoint_files import resolve_checkpoint, write_remote_code

PROCESSOR_FILES = [PROCESSOR_CONFIG, "tokenizer_config.json", "tokenizer.json"]
# What transformers' Auto classes and pipeline() pass to any remote-code loader, to which molmini's loading gives
# no meaning.
AUTO_LOADER_ARGUMENTS = {"_from_auto", "_from_pipeline", "trust_remote_code", "code_revision", "_commit_hash",
                         "force_download", "local_files_only", "proxies"}
# What AutoProcessor passes along that has no meaning for molmini's processor: pipeline() hands it the model's
# loading options (dtype, device_map) too.
PROCESSOR_LOADER_ARGUMENTS = AUTO_LOADER_ARGUMENTS | {"use_fast", "dtype", "torch_dtype", "device_map"}


class MolminiTransformersProcessor(MolminiProcessor, ProcessorMixin):
    """A MolminiProcessor that speaks transformers' processor interface (AutoProcessor loads it). It is a
    ProcessorMixin for the pipelines, which take nothing else; everything they call is MolminiProcessor's or
    defined here (ProcessorMixin's own __init__ and loading never run)."""
    image_token = IMAGE_MARKER

    @property
    def chat_template(self) -> str:
        return getattr(self.tokenizer, "chat_template", None) or MOLMINI_CHAT_TEMPLATE

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | Path, max_length: int | None = None,
                        revision: str | None = None, cache_dir: str | None = None, token: str | bool | None = None,
                        subfolder: str = "", **kwargs: Any) -> "MolminiTransformersProcessor":
        """The processor of a molmini checkpoint folder or hub id; `max_length` replaces the saved sequence budget."""
        unknown = sorted(set(kwargs) - PROCESSOR_LOADER_ARGUMENTS)
        if unknown:
            raise ValueError(f"MolminiTransformersProcessor.from_pretrained got arguments it does not know: {unknown}; "
                             "it takes max_length and the hub's revision, subfolder, cache_dir and token")
        folder = resolve_checkpoint(pretrained_model_name_or_path, required=PROCESSOR_FILES, revision=revision,
                                    cache_dir=cache_dir, token=token, subfolder=subfolder)
        return super().from_pretrained(folder, max_length=max_length)

    def save_pretrained(self, folder: str | Path) -> None:
        """The processor files, named for AutoProcessor, with the remote-code files they point to."""
        super().save_pretrained(folder)
        write_remote_code(folder)

    @classmethod
    def register_for_auto_class(cls, auto_class: str = "AutoProcessor") -> None:
        """A no-op: save_pretrained writes the auto_map (see MolminiConfig.register_for_auto_class)."""

    # ---- text ---------------------------------------------------------------------------------------
    def apply_chat_template(self, conversation: Sequence[dict[str, Any]], add_generation_prompt: bool = True,
                            tokenize: bool = False, continue_final_message: bool = False, **_: Any) -> Any:
        """The conversation (user/assistant turns; a content is a string or transformers' list of
        {"type": "image"} and {"type": "text", "text": ...} parts) as text in the model's chat format, each image
        an `<image>` marker. `tokenize=True` gives the model inputs instead, from the images the parts hold.
        `continue_final_message=True` leaves a final assistant turn open, for generation to continue it (the
        pipeline passes it for a conversation that ends with one). transformers' other options (return_dict,
        chat_template, ...) have no effect: the format is the model's."""
        if continue_final_message and (not conversation or conversation[-1].get("role") != "assistant"):
            raise ValueError("continue_final_message=True continues a final assistant turn, and this conversation "
                             "ends with a user turn; leave it out, or end the conversation with the assistant's "
                             "start of an answer")
        chat, text, images = self.chat, "", []
        for k, turn in enumerate(conversation):
            role, content = turn.get("role"), turn.get("content", "")
            if role != ("user" if k % 2 == 0 else "assistant"):
                raise ValueError(f"turn {k} of the conversation has role {role!r}; molmini's chat format alternates "
                                 "user and assistant turns, starting with the user (put a system prompt in the first "
                                 "user turn)")
            if not isinstance(content, str):
                images += [p.get("image") or p.get("path") or p.get("url") for p in content if p.get("type") == "image"]
                content = "".join(IMAGE_MARKER if p.get("type") == "image" else p.get("text", "") for p in content)
            if role == "user":
                text += (chat.first_user_prefix if k == 0 else chat.user_prefix) + content
                text += chat.assistant_prefix if k + 1 < len(conversation) or add_generation_prompt else ""
            else:
                text += content + ("" if continue_final_message and k + 1 == len(conversation)
                                   else chat.assistant_suffix)
        if not tokenize:
            return text
        if any(im is None for im in images):
            raise ValueError("apply_chat_template(tokenize=True) needs each image part to hold its image "
                             '({"type": "image", "image": PIL_IMAGE_PATH_OR_URL}); or render the text (tokenize=False) '
                             "and call processor(images=..., text=...)")
        return self(images=[images], text=[text])

    def split_prompt(self, text: str) -> tuple[str, list[dict[str, str]], str]:
        """(question, earlier turns, start of the answer) of a prompt that apply_chat_template rendered; the start
        of the answer is "" unless the prompt continues a final assistant turn. Any other text is taken as the
        question itself, which the chat format then surrounds."""
        chat = self.chat
        if not (text.startswith(chat.first_user_prefix) and chat.assistant_prefix in text):
            return text, [], ""
        body, _, answer_start = text[len(chat.first_user_prefix):].rpartition(chat.assistant_prefix)
        if chat.assistant_suffix in answer_start:
            raise ValueError(f"the prompt {text!r} ends with a finished assistant turn, so there is nothing to "
                             "answer; end the conversation with a user turn, or pass continue_final_message=True "
                             "to apply_chat_template to continue the assistant's answer")
        pieces = body.split(chat.assistant_prefix)
        turns = [pieces[0]]
        for piece in pieces[1:]:
            answer, separator, question = piece.partition(chat.assistant_suffix + chat.user_prefix)
            if not separator:
                raise ValueError(f"the prompt {text!r} is not in this model's chat format; render it with "
                                 "processor.apply_chat_template or pass the bare question")
            turns += [answer, question]
        history = [{"role": "user" if i % 2 == 0 else "assistant", "content": t} for i, t in enumerate(turns[:-1])]
        return turns[-1], history, answer_start

    # ---- batches ------------------------------------------------------------------------------------
    def __call__(self, images: Any = None, text: str | Sequence[str] | None = None, return_tensors: str | None = "pt",
                 padding: bool | str = True, padding_side: str = "left", videos: Sequence[Any] | None = None,
                 audios: Sequence[Any] | None = None):
        """The model inputs (input_ids, attention_mask, pixel_values, pad_fraction, pool_index) of one prompt per
        text, each about its images (one `<image>` marker each; none for a text-only prompt), padded to the longest
        (on the left, for generation), as a BatchFeature of torch tensors. `images` is one list per text, or one flat
        list that the texts' markers split (a text without a marker takes one image), or None; an image is a PIL
        image, a file path or an http(s) URL."""
        from transformers.feature_extraction_utils import BatchFeature
        if return_tensors not in ("pt", None):
            raise ValueError(f"return_tensors={return_tensors!r}: molmini's processor gives torch tensors; pass 'pt'")
        if padding not in (True, "longest"):
            raise ValueError(f"padding={padding!r}: molmini's processor pads to the longest prompt; pass padding=True")
        if videos or audios:
            raise ValueError("molmini models read images and text only; pass no videos or audios")
        if text is None:
            raise ValueError("molmini's processor needs text: one prompt per sample")
        texts = [text] if isinstance(text, str) else list(text)
        samples = []
        for im, prompt in zip(self._images_per_text(images, texts), texts):
            question, history, answer_start = self.split_prompt(prompt)
            samples.append(self.process_prompt(im, question, history, answer_start))
        batch = self.collate(samples, padding_side=padding_side)
        batch.pop("keys")
        return BatchFeature(data=batch)

    @staticmethod
    def _images_per_text(images: Any, texts: list[str]) -> list[list[Any]]:
        if images is None:
            return [[] for _ in texts]
        images = [images] if isinstance(images, SINGLE_IMAGE) else list(images)
        if all(isinstance(im, SINGLE_IMAGE) for im in images):  # one flat list: split by the texts' markers
            counts = [max(1, t.count(IMAGE_MARKER)) for t in texts]
            if sum(counts) == len(images):
                starts = [sum(counts[:i]) for i in range(len(counts))]
                return [images[start:start + n] for start, n in zip(starts, counts)]
        elif len(images) == len(texts):
            return [[] if im is None else [im] if isinstance(im, SINGLE_IMAGE) else list(im) for im in images]
        raise ValueError(f"got {len(texts)} prompts and {len(images)} images (or image lists) that do not split into "
                         "the prompts' images (one per <image> marker, or one for a prompt without one); pass "
                         "images=[[images of prompt 1], [images of prompt 2], ...]")

    def batch_decode(self, sequences: Any, **kwargs: Any) -> list[str]:
        return self.tokenizer.batch_decode(sequences, **kwargs)

    def decode(self, token_ids: Any, **kwargs: Any) -> str:
        return self.tokenizer.decode(token_ids, **kwargs)

    def post_process_image_text_to_text(self, generated_outputs: Any, skip_special_tokens: bool = True,
                                        **kwargs: Any) -> list[str]:
        """The texts of generated sequences, as transformers' image-text-to-text pipeline reads them (it decodes
        the prompt the same way and cuts it off the front)."""
        return self.batch_decode(generated_outputs, skip_special_tokens=skip_special_tokens, **kwargs)
