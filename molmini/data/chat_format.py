"""How a conversation is laid out as text: the LM's own chat template, cut into the four pieces that
surround user and assistant contents.

A pretrained instruct LM answers best in the format it was tuned on, so molmini renders conversations with
the tokenizer's chat template. The template is probed once with sentinel contents and split into
`first_user_prefix`, `user_prefix`, `assistant_prefix` and `assistant_suffix`; the processor then
tokenizes each piece on its own, which lets it put image tokens inside the first user turn and take
labels exactly on the answers. A tokenizer trained by molmini carries a template of molmini's own tokens.
"""
from __future__ import annotations

from dataclasses import dataclass

# molmini's own format: <|user|>question<|end|><|assistant|>answer<|end|>
MOLMINI_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'user' %}<|user|>{{ message['content'] }}<|end|>"
    "{% elif message['role'] == 'assistant' %}<|assistant|>{{ message['content'] }}<|end|>{% endif %}"
    "{% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}")

_Q1, _A1, _Q2, _A2 = "MOLMINIQUESTIONONE", "MOLMINIANSWERONE", "MOLMINIQUESTIONTWO", "MOLMINIANSWERTWO"


@dataclass(frozen=True)
class ChatFormat:
    first_user_prefix: str  # before the first user content (a system prompt, BOS, the role header)
    user_prefix: str  # before every later user content
    assistant_prefix: str  # after a user content, up to where the answer starts (the generation prompt)
    assistant_suffix: str  # after an answer; its first token is where generation stops

    @classmethod
    def from_tokenizer(cls, tokenizer) -> "ChatFormat":
        template = getattr(tokenizer, "chat_template", None) or MOLMINI_CHAT_TEMPLATE

        def render(messages, generation_prompt=False) -> str:
            return tokenizer.apply_chat_template(messages, chat_template=template, tokenize=False,
                                                 add_generation_prompt=generation_prompt)

        def turns(*contents):
            return [{"role": "user" if i % 2 == 0 else "assistant", "content": c} for i, c in enumerate(contents)]

        name = getattr(tokenizer, "name_or_path", "") or "the tokenizer"
        try:
            one, two = render(turns(_Q1, _A1)), render(turns(_Q1, _A1, _Q2, _A2))
            prompt = render(turns(_Q1), generation_prompt=True)
            q1, a1 = one.index(_Q1), one.index(_A1)
            fmt = cls(first_user_prefix=one[:q1], assistant_prefix=one[q1 + len(_Q1):a1],
                      assistant_suffix=one[a1 + len(_A1):], user_prefix=two[len(one):two.index(_Q2)])
        except (ValueError, TypeError) as e:
            raise ValueError(f"the chat template of {name} cannot be split into user and assistant turns ({e}); "
                             "set tokenizer.chat_template to a plain user/assistant template") from e
        if not (two.startswith(one) and prompt == fmt.first_user_prefix + _Q1 + fmt.assistant_prefix
                and two[len(one):] == fmt.user_prefix + _Q2 + fmt.assistant_prefix + _A2 + fmt.assistant_suffix):
            raise ValueError(f"the chat template of {name} renders turns differently depending on their position "
                             "(e.g. it rewrites earlier turns); molmini needs a template whose turns concatenate")
        if not fmt.assistant_suffix.strip():
            raise ValueError(f"the chat template of {name} ends assistant turns with nothing; generation would "
                             "never stop")
        return fmt

    def prompt_template(self, image_marker: str = "<image>") -> str:
        """The text of a one-question prompt as this format lays it out, with `{question}` where the question
        goes and `image_marker` where the image does: what an evaluation records as its prompt template."""
        return self.first_user_prefix + image_marker + "{question}" + self.assistant_prefix

    def stop_token_id(self, tokenizer) -> int:
        """The token that ends an answer: the first token of the assistant suffix."""
        return tokenizer(self.assistant_suffix.strip(), add_special_tokens=False)["input_ids"][0]

