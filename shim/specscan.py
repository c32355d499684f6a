"""One annotation of an OCI spec, read where its bytes are, without json.

The template reads each pod's sandbox id from its spec, and every later pod's shim and guests are forked
from the template's memory: a Python object made of another part of the spec (its environment: tokens,
passwords) would outlive the call in freed memory and be inherited by them all, as json.load's objects
were. So this walks the JSON text by index and makes no object of anything but the value it returns; its
caller zeroes the buffer.

It agrees with json or refuses (ValueError); it never guesses. It walks the whole text's structure
(objects, arrays, strings, numbers and literals as json spells them), reads `annotations` only as a
member of the top-level object and the key only as a member of that object, and refuses where json would
read something it does not compare byte for byte: a key of either object written with an escape (json
decodes it: "annot\\u0061tions" is "annotations"; Go's encoder writes <, > and & so), either name twice in
its object (json keeps the last), an escape or control character in the value. Not checked are the bytes
inside other strings (their escapes, control characters, UTF-8), on which no answer depends: the shim's
Create reads the spec with json and refuses it if they are not JSON.
"""

from __future__ import annotations

from .jsonload import WHITESPACE

SPACE = WHITESPACE.encode()
QUOTE, BACKSLASH, COLON, COMMA, MINUS, DOT, ZERO, NINE = b'"\\:,-.09'
OPEN_OBJECT, CLOSE_OBJECT = b"{}"
CLOSING = {OPEN_OBJECT: CLOSE_OBJECT, ord("["): ord("]")}
LITERALS = (b"true", b"false", b"null", b"NaN", b"Infinity", b"-Infinity")  # json.loads's (the last three Python's)


def annotation(text: bytearray, size: int, key: str) -> str:
    """The string value of annotation `key` of the spec in the first `size` bytes of `text`; "" where the
    spec has no annotations (or null) or they lack `key`. ValueError where json's answer could differ."""
    start = _skip_space(text, 0, size)
    if _skip_space(text, _value_end(text, start, size), size) != size:
        raise ValueError("the spec has more after its JSON value")
    if text[start] != OPEN_OBJECT:
        raise ValueError("the spec is not a JSON object")
    annotations = _member(text, start, size, "annotations")
    if annotations < 0 or text.startswith(b"null", annotations, size):
        return ""
    if text[annotations] != OPEN_OBJECT:
        raise ValueError('the spec\'s "annotations" is not an object')
    value = _member(text, annotations, size, key)
    if value < 0:
        return ""
    end = _string_end(text, value, size) - 1 if text[value] == QUOTE else value
    if end == value or text.find(b"\\", value, end) >= 0 or any(text[i] < 0x20 for i in range(value, end)):
        raise ValueError(f"annotation {key} is not a string free of escapes")
    return text[value + 1:end].decode()


def _member(text: bytearray, at: int, size: int, name: str) -> int:
    """Where the value of member `name` of the object at `at` (its structure checked) starts, else -1.
    ValueError where a key is written with an escape, or `name` comes twice."""
    pattern = name.encode()
    found = -1
    at = _skip_space(text, at + 1, size)
    while text[at] == QUOTE:
        end = _string_end(text, at, size)
        if text.find(b"\\", at, end) >= 0:
            raise ValueError(f"a key beside {name} is written with an escape")
        value = _skip_space(text, _skip_space(text, end, size) + 1, size)  # past the colon
        if end - at - 2 == len(pattern) and text.startswith(pattern, at + 1):
            if found >= 0:
                raise ValueError(f"{name} comes twice")
            found = value
        at = _skip_space(text, _value_end(text, value, size), size)
        if text[at] == COMMA:
            at = _skip_space(text, at + 1, size)
    return found


def _value_end(text: bytearray, at: int, size: int) -> int:
    """The index after the JSON value at `at`, its whole structure checked; ValueError where it is not
    JSON. A loop with a stack, not recursion: a deep nesting costs memory, never Python's stack."""
    closers = bytearray()  # the bracket each open object or array awaits, innermost last
    while True:
        at = _skip_space(text, at, size)  # a value starts here
        byte = text[at] if at < size else -1
        if byte in CLOSING:
            at = _skip_space(text, at + 1, size)
            if at < size and text[at] == CLOSING[byte]:
                at += 1  # empty: the value ends here
            else:
                closers.append(CLOSING[byte])
                if byte == OPEN_OBJECT:
                    at = _key_end(text, at, size)
                continue
        elif byte == QUOTE:
            at = _string_end(text, at, size)
        else:
            at = _scalar_end(text, at, size)
        while closers:  # after a value: the brackets it closes, up to a comma and the next value
            at = _skip_space(text, at, size)
            if at < size and text[at] == closers[-1]:
                closers.pop()
                at += 1
            elif at < size and text[at] == COMMA:
                at = _skip_space(text, at + 1, size)
                if closers[-1] == CLOSE_OBJECT:
                    at = _key_end(text, at, size)
                break
            else:
                raise ValueError(f"the spec is not JSON: expected ',' or a closing bracket at byte {at}")
        else:
            return at


def _key_end(text: bytearray, at: int, size: int) -> int:
    """The index after the key at `at` and its colon."""
    if at >= size or text[at] != QUOTE:
        raise ValueError(f"the spec is not JSON: expected a key at byte {at}")
    at = _skip_space(text, _string_end(text, at, size), size)
    if at >= size or text[at] != COLON:
        raise ValueError(f"the spec is not JSON: expected ':' at byte {at}")
    return at + 1


def _string_end(text: bytearray, at: int, size: int) -> int:
    """The index after the string whose opening quote is at `at`: the first quote after it that an even
    number of backslashes precedes (an escaped quote is preceded by an odd number)."""
    close = text.find(b'"', at + 1, size)
    while close >= 0:
        before = close - 1
        while text[before] == BACKSLASH:  # stops at the opening quote at the latest
            before -= 1
        if (close - 1 - before) % 2 == 0:
            return close + 1
        close = text.find(b'"', close + 1, size)
    raise ValueError(f"the spec is not JSON: a string at byte {at} does not end")


def _scalar_end(text: bytearray, at: int, size: int) -> int:
    """The index after the literal or number at `at`, spelled as json reads them."""
    for literal in LITERALS:
        if text.startswith(literal, at, size):
            return at + len(literal)
    end = at + (at < size and text[at] == MINUS)
    digits = _digits_end(text, end, size)
    if digits == end or (text[end] == ZERO and digits > end + 1):
        raise ValueError(f"the spec is not JSON: no value at byte {at}")
    end = digits
    if end < size and text[end] == DOT:
        end = _digits_end(text, end + 1, size, at_least=1)
    if end < size and text[end] in b"eE":
        end += 1 + (end + 1 < size and text[end + 1] in b"+-")
        end = _digits_end(text, end, size, at_least=1)
    return end


def _digits_end(text: bytearray, at: int, size: int, at_least: int = 0) -> int:
    end = at
    while end < size and ZERO <= text[end] <= NINE:
        end += 1
    if end - at < at_least:
        raise ValueError(f"the spec is not JSON: a number without digits at byte {at}")
    return end


def _skip_space(text: bytearray, at: int, size: int) -> int:
    """The first index from `at` (below `size`) that is not JSON whitespace, else `size`."""
    while at < size and text[at] in SPACE:
        at += 1
    return at
