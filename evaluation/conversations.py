"""Conversations as role-tagged turns: HH-RLHF transcripts and TRL messages in, the same bytes out. No Django.

A preference row is split by turns, never by characters: the prompt is every turn before the final
assistant turn, chosen and rejected are exactly the final assistant turns. Anthropic's HH-RLHF
transcripts ("\\n\\nHuman: …\\n\\nAssistant: …") are cut where TRL's own conversion
(trl/examples/datasets/hh-rlhf-helpful-base.py) and the DPO reference code cut them: at the last
"\\n\\nAssistant:" marker, so a reply that begins with the same word on both sides keeps that word.

Round trip: `standard_strings` gives TRL's standard preference row (`prompt` ends with
"\\n\\nAssistant:", each completion keeps its leading space), and `prompt + chosen` is the
original transcript byte for byte; `conversational` gives TRL's conversational row
(`prompt` = turns, `chosen`/`rejected` = [assistant turn]), whose concatenation is the original
turn list. A transcript the canonical writer would not reproduce exactly (a marker without its
space, text before the first marker) keeps its original text in the payload (`source_text`).

Rows that cannot be split honestly raise SplitError naming the field; with `flag=True` they are
kept instead, with a flag the annotator and researcher see (see FLAG_MESSAGES).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

Turn = dict[str, str]  # {"role": ..., "content": ...}

HH_ROLE = {"Human": "user", "Assistant": "assistant"}
HH_NAME = {"user": "Human", "assistant": "Assistant"}
GENERATION_PROMPT = "\n\nAssistant:"
# A marker starts a turn only at the start of the text or after a blank line, as in TRL's splitter;
# "Human:" inside a reply (some HH rows have them) is text.
_HH_MARKER = re.compile(r"(?:^|\n\n)(Human|Assistant):")

# Worded without saying which side is the file's chosen one: annotators see them, and sides are blinded.
FLAG_MESSAGES = {
    "empty_reply_a": "One response is empty.",
    "empty_reply_b": "One response is empty.",
    "diverged": "The two conversations differ before their final reply: each response shows its own later turns.",
    "identical": "The two responses are identical.",
}


def flag_messages(flags: list[str] | None) -> list[str]:
    """What the annotator is told about an item imported with flags (each message once)."""
    return list(dict.fromkeys(FLAG_MESSAGES.get(f, f) for f in flags or []))


class SplitError(Exception):
    """A row that cannot be split honestly; `field` names the row's field at fault."""

    def __init__(self, field_name: str, message: str, flag: str = "") -> None:
        super().__init__(f"{field_name}: {message}")
        self.field = field_name
        self.message = message
        self.flag = flag


# --------------------------------------------------------------------------- HH transcripts


def has_hh_markers(text: str) -> bool:
    return _HH_MARKER.search(text) is not None


def parse_hh(text: str) -> tuple[str, list[Turn]]:
    """(text before the first marker, turns). A turn's content drops the one space after "Role:"."""
    matches = list(_HH_MARKER.finditer(text))
    if not matches:
        return text, []
    turns: list[Turn] = []
    for i, match in enumerate(matches):
        end = matches[i + 1].start() if i + 1 < len(matches) else len(text)
        content = text[match.end() : end]
        if content.startswith(" "):
            content = content[1:]
        turns.append({"role": HH_ROLE[match.group(1)], "content": content})
    return text[: matches[0].start()], turns


def format_hh(turns: list[Turn]) -> str:
    """The canonical HH transcript of `turns`: "\\n\\nHuman: …\\n\\nAssistant: …"."""
    return "".join(f"\n\n{HH_NAME.get(t['role'], t['role'].title())}: {t['content']}" for t in turns)


# --------------------------------------------------------------------------- splitting


@dataclass
class Split:
    """A preference row split into a shared prompt and two responses (in the file's order: a = chosen)."""

    prompt: str | list[Turn]
    a: str | list[Turn]
    b: str | list[Turn]
    source: str  # "hh" | "messages" | "text": how the file wrote it, so exports can write it back
    source_text: dict[str, str] | None = None  # exact standard strings when the canonical writer differs
    flags: list[str] = field(default_factory=list)

    def payload_fields(self) -> dict[str, Any]:
        out: dict[str, Any] = {"prompt": self.prompt, "response_a": self.a, "response_b": self.b}
        out["source"] = self.source
        if self.source_text is not None:
            out["source_text"] = self.source_text
        if self.flags:
            out["flags"] = list(self.flags)
        return out


def _is_blank(value: str | list[Turn]) -> bool:
    if isinstance(value, str):
        return not value.strip()
    return all(not t["content"].strip() for t in value)


def _final_turns(turns: list[Turn], name: str) -> tuple[list[Turn], Turn]:
    if not turns:
        raise SplitError(name, "has no turns")
    if turns[-1]["role"] != "assistant":
        raise SplitError(name, f"must end with an assistant turn (its last turn is {turns[-1]['role']!r})")
    return turns[:-1], turns[-1]


def split_turns(chosen: list[Turn], rejected: list[Turn], *, source: str, flag: bool) -> Split:
    """Prompt = the turns before the final assistant turn, which both transcripts must share."""
    prompt_a, last_a = _final_turns(chosen, "chosen")
    prompt_b, last_b = _final_turns(rejected, "rejected")
    flags: list[str] = []
    a: str | list[Turn] = last_a["content"]
    b: str | list[Turn] = last_b["content"]
    prompt = prompt_a
    if prompt_a != prompt_b:
        shared = 0
        while shared < min(len(chosen), len(rejected)) and chosen[shared] == rejected[shared]:
            shared += 1
        if not flag or shared == 0:
            raise SplitError(
                "rejected",
                f"differs from chosen before the final assistant turn (turn {shared + 1} of "
                f"{len(rejected)}), so the two replies do not answer the same conversation",
                "diverged",
            )
        prompt, a, b = chosen[:shared], chosen[shared:], rejected[shared:]
        flags.append("diverged")
    _check_replies(a, b, flags, flag=flag)
    return Split(prompt, a, b, source, flags=flags)


def _check_replies(a: str | list[Turn], b: str | list[Turn], flags: list[str], *, flag: bool) -> None:
    for name, value, code in (("chosen", a, "empty_reply_a"), ("rejected", b, "empty_reply_b")):
        if _is_blank(value):
            if not flag:
                raise SplitError(name, "its final reply is empty", code)
            flags.append(code)
    if a == b:
        if not flag:
            raise SplitError("rejected", "is identical to chosen", "identical")
        flags.append("identical")


def split_hh(chosen: str, rejected: str, *, flag: bool) -> Split:
    """Split two HH transcripts at their final "Assistant:" turn."""
    lead_a, turns_a = parse_hh(chosen)
    lead_b, turns_b = parse_hh(rejected)
    for name, turns in (("chosen", turns_a), ("rejected", turns_b)):
        if not turns:
            raise SplitError(name, "has no Human:/Assistant: turns while the other side does")
    if lead_a.strip() or lead_b.strip():
        name = "chosen" if lead_a.strip() else "rejected"
        raise SplitError(name, "has text before its first Human:/Assistant: turn")
    split = split_turns(turns_a, turns_b, source="hh", flag=flag)
    # Keep the file's exact text when the canonical writer would not give it back.
    if format_hh(turns_a) != chosen or format_hh(turns_b) != rejected:
        cut, _ = _standard_cut(split)
        prompt_len = len(cut)
        if chosen[:prompt_len] == rejected[:prompt_len] == cut:
            split.source_text = {"prompt": cut, "a": chosen[prompt_len:], "b": rejected[prompt_len:]}
        else:
            shared = _common_prefix_len(chosen, rejected)
            split.source_text = {"prompt": chosen[:shared], "a": chosen[shared:], "b": rejected[shared:]}
    return split


def _common_prefix_len(a: str, b: str) -> int:
    n = 0
    limit = min(len(a), len(b))
    while n < limit and a[n] == b[n]:
        n += 1
    return n


def split_plain(chosen: str, rejected: str, *, flag: bool) -> Split:
    """Implicit prompt for plain strings (no turn markers): the shared prefix, cut at a word boundary.

    TRL's `extract_prompt` cuts at the first differing character and gives the space before it to the
    completion ("The sky is" / " blue."). Cutting mid-word would move part of a reply into the
    prompt ("…Assistant: I" / "'m sorry"), so the cut backs up to the whitespace before the word.
    """
    if chosen == rejected:
        if not flag:
            raise SplitError("rejected", "is identical to chosen", "identical")
        return Split("", chosen, rejected, "text", flags=["identical"])
    shared = _common_prefix_len(chosen, rejected)
    while shared > 0 and not chosen[shared - 1].isspace():
        shared -= 1
    while shared > 0 and chosen[shared - 1].isspace():
        shared -= 1
    if shared == 0:
        raise SplitError("chosen", "shares no prompt text with rejected; give `prompt` explicitly")
    flags: list[str] = []
    a, b = chosen[shared:], rejected[shared:]
    _check_replies(a, b, flags, flag=flag)
    return Split(chosen[:shared], a, b, "text", flags=flags)


def split_explicit(
    prompt: str | list[Turn], chosen: str | list[Turn], rejected: str | list[Turn], *, flag: bool
) -> Split:
    """An explicit {prompt, chosen, rejected} row: the transcript is prompt + completion, split by turns."""
    if isinstance(prompt, list) or isinstance(chosen, list) or isinstance(rejected, list):
        prompt_turns = prompt if isinstance(prompt, list) else [{"role": "user", "content": prompt}]
        chosen_turns = chosen if isinstance(chosen, list) else [{"role": "assistant", "content": chosen}]
        rejected_turns = rejected if isinstance(rejected, list) else [{"role": "assistant", "content": rejected}]
        return split_turns(prompt_turns + chosen_turns, prompt_turns + rejected_turns, source="messages", flag=flag)
    if has_hh_markers(prompt):
        return split_hh(prompt + chosen, prompt + rejected, flag=flag)
    flags: list[str] = []
    _check_replies(chosen, rejected, flags, flag=flag)
    return Split(prompt, chosen, rejected, "text", flags=flags)


def split_completion(prompt: str | list[Turn], response: str | list[Turn]) -> tuple[str | list[Turn], str, str]:
    """One prompt and one response (rating items): (prompt, reply, source), split by turns where there are turns."""
    if isinstance(prompt, list) or isinstance(response, list):
        prompt_turns = prompt if isinstance(prompt, list) else [{"role": "user", "content": prompt}]
        response_turns = response if isinstance(response, list) else [{"role": "assistant", "content": response}]
        before, last = _final_turns(prompt_turns + response_turns, "response")
        return before, last["content"], "messages"
    if has_hh_markers(prompt):
        lead, turns = parse_hh(prompt + response)
        if not lead.strip() and turns and turns[-1]["role"] == "assistant" and format_hh(turns) == prompt + response:
            return turns[:-1], turns[-1]["content"], "hh"
    return prompt, response, "text"


# --------------------------------------------------------------------------- writing back


def _as_turns(value: str | list[Turn]) -> list[Turn]:
    return value if isinstance(value, list) else [{"role": "assistant", "content": value}]


def _standard_cut(split: Split) -> tuple[str, bool]:
    """The standard prompt string, and whether it ends with the generation prompt (both replies start
    with an assistant turn, as every well-formed row does)."""
    prompt_turns = split.prompt if isinstance(split.prompt, list) else []
    after = _as_turns(split.a)[0]["role"] == _as_turns(split.b)[0]["role"] == "assistant"
    cut = format_hh(prompt_turns)
    return (cut + GENERATION_PROMPT, True) if after else (cut, False)


def _hh_completion(value: str | list[Turn], after_generation_prompt: bool) -> str:
    text = format_hh(_as_turns(value))
    return text[len(GENERATION_PROMPT) :] if after_generation_prompt else text


def standard_strings(payload: dict[str, Any]) -> tuple[str, str, str]:
    """TRL's standard preference strings (prompt, a, b): for HH rows, prompt + a is the original transcript."""
    exact = payload.get("source_text")
    if exact:
        return exact["prompt"], exact["a"], exact["b"]
    prompt, a, b = payload["prompt"], payload["response_a"], payload["response_b"]
    if isinstance(prompt, str) and isinstance(a, str) and isinstance(b, str):
        return prompt, a, b
    prompt_turns = prompt if isinstance(prompt, list) else [{"role": "user", "content": prompt}]
    cut, after = _standard_cut(Split(prompt_turns, a, b, "hh"))
    return cut, _hh_completion(a, after), _hh_completion(b, after)


def conversational(payload: dict[str, Any]) -> tuple[list[Turn], list[Turn], list[Turn]]:
    """TRL's conversational preference messages (prompt, a, b); prompt + a is the original turn list."""
    prompt = payload["prompt"]
    prompt_turns = prompt if isinstance(prompt, list) else [{"role": "user", "content": prompt}]
    return prompt_turns, _as_turns(payload["response_a"]), _as_turns(payload["response_b"])


def response_turns(value: str | list[Turn]) -> list[Turn]:
    return _as_turns(value)
