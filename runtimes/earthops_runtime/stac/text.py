"""Free text: the ``q`` of the STAC API free-text extension (advanced form), one semantics for every path.

What a ``q`` means, whoever answers it (the search index's inverted index in
:mod:`earthops_runtime.catalog.textindex`, the STAC API, ``earthops search --q``, a static catalog
filtered in process):

* **Text of an item** (:func:`item_texts`): its id, and every top-level property whose value is a
  string or a list of strings (``title``, ``description``, ``keywords``, ``platform``, ...), except
  the timestamps (``datetime``, ``start_datetime``, ``end_datetime``). Each value is tokenized on its own.
* **Tokens** (:func:`tokenize`): runs of letters and digits, lower-cased (``str.lower``); anything else
  separates (``Sentinel-1`` is ``sentinel``, ``1``; ``S1A_IW`` is ``s1a``, ``iw``).
* **A term** of ``q`` matches an item holding that token in any text. A term that tokenizes to several
  tokens (``Sentinel-1``) and a quoted phrase (``"sea ice"``) match those tokens one after another
  within one value. Matching is exact per token: no stemming, no prefixes.
* **Operators**: whitespace or ``,`` between terms means OR; ``AND``, ``OR``, ``NOT`` (upper case),
  parentheses; ``+term`` must match, ``-term`` must not. Precedence: NOT, then AND, then OR. A ``q``
  of only excluded terms matches every item without them.
* **Relevance** (:func:`score`): the sum over the query's positive tokens (those not under a NOT) of
  ``(1 + ln tf) * ln(1 + N / df)``, tf the token's count in the item, df the number of items holding
  it among the N searched. Results with a ``q`` come by relevance, highest first, then in the usual
  order (:data:`earthops_runtime.stac.query.ORDER`).

A ``q`` that cannot be parsed (unbalanced parentheses or quotes, an operator without an operand, no
term at all) raises :class:`SearchError` naming ``q``.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from earthops.api.stac import SearchError

_TOKEN = re.compile(r"[^\W_]+")
#: Properties that are never text (parsed as times by every path).
NOT_TEXT = frozenset({"datetime", "start_datetime", "end_datetime"})
#: The longest ``q`` accepted (characters) and the most terms in it.
MAX_Q = 1000
MAX_TERMS = 64


def tokenize(text: str) -> list[str]:
    """The tokens of one text value, in order."""
    return _TOKEN.findall(text.lower())


def bigram(a: str, b: str) -> str:
    """The index term of two neighbouring tokens (tokens hold no spaces, so this is unambiguous)."""
    return f"{a} {b}"


def text_values(key: str, value: Any) -> list[str]:
    """The text values of one property: a string, or the strings of a list of strings."""
    if key in NOT_TEXT:
        return []
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and value and all(isinstance(v, str) for v in value):
        return list(value)
    return []


def item_texts(item: Mapping[str, Any]) -> list[str]:
    """The text values of an item: its id, then its string and string-list properties."""
    texts = [item["id"]] if isinstance(item.get("id"), str) else []
    for key, value in (item.get("properties") or {}).items():
        texts += text_values(key, value)
    return texts


def value_terms(text: str) -> Counter[str]:
    """Index terms of one text value: its tokens and the bigrams of neighbouring tokens."""
    tokens = tokenize(text)
    terms = Counter(tokens)
    terms.update(bigram(a, b) for a, b in zip(tokens, tokens[1:]))
    return terms


def item_terms(item: Mapping[str, Any]) -> Counter[str]:
    """Index terms of an item (tokens and bigrams of each text value) with their counts."""
    terms: Counter[str] = Counter()
    for text in item_texts(item):
        terms.update(value_terms(text))
    return terms


# --------------------------------------------------------------------------------------------------
# The query


@dataclass(frozen=True)
class Term:
    """A token sequence: one token, or a phrase (tokens in a row within one value)."""

    tokens: tuple[str, ...]

    @property
    def index_terms(self) -> tuple[str, ...]:
        """Index terms every matching item holds: the token, or the phrase's bigrams."""
        if len(self.tokens) == 1:
            return self.tokens
        return tuple(bigram(a, b) for a, b in zip(self.tokens, self.tokens[1:]))


@dataclass(frozen=True)
class Not:
    arg: Node


@dataclass(frozen=True)
class Optional:
    """Terms that need not match but add relevance (the unsigned terms beside ``+term``)."""

    arg: Node


@dataclass(frozen=True)
class And:
    args: tuple[Node, ...]


@dataclass(frozen=True)
class Or:
    args: tuple[Node, ...]


Node = Term | Not | Optional | And | Or

_LEX = re.compile(r'\s*(?:(?P<open>\()|(?P<close>\))|(?P<comma>,)|"(?P<phrase>[^"]*)"|(?P<signed>[+-]"[^"]*")|(?P<quote>")'
                  r'|(?P<word>[^\s(),"]+))')


def _lex(q: str) -> Iterator[tuple[str, str]]:
    pos = 0
    while True:
        m = _LEX.match(q, pos)
        if m is None or m.end() == pos:
            if q[pos:].strip():
                raise SearchError("q", f"{q!r}: cannot read {q[pos:pos + 20]!r}")
            return
        pos = m.end()
        kind = m.lastgroup
        if kind == "quote":
            raise SearchError("q", f"{q!r}: a quoted phrase is not closed")
        if kind is not None:
            yield kind, m.group(kind)


class _Parser:
    """q := or; or := and (("OR" | "," | juxtaposition) and)*; and := unary ("AND" unary)*;
    unary := "NOT" unary | "+" atom | "-" atom | atom; atom := word | phrase | "(" or ")"."""

    def __init__(self, q: str):
        self.q = q
        self.tokens = list(_lex(q))
        self.pos = 0
        self.terms = 0

    def fail(self, why: str) -> SearchError:
        return SearchError("q", f"{self.q!r}: {why}")

    def peek(self) -> tuple[str, str] | None:
        return self.tokens[self.pos] if self.pos < len(self.tokens) else None

    def take(self) -> tuple[str, str]:
        token = self.tokens[self.pos]
        self.pos += 1
        return token

    def parse(self) -> Node:
        if not self.tokens:
            raise self.fail("no term to search for")
        node = self.parse_or()
        if self.peek() is not None:
            raise self.fail(f"unexpected {self.peek()[1]!r}")  # type: ignore[index]
        return node

    def _starts_operand(self) -> bool:
        token = self.peek()
        return token is not None and (token[0] in ("open", "phrase", "signed") or
                                      (token[0] == "word" and token[1] not in ("AND", "OR")))

    def parse_or(self) -> Node:
        args = [self.parse_and()]
        while True:
            token = self.peek()
            if token is None or token[0] == "close":
                break
            if token in (("word", "OR"), ("comma", ",")):
                self.take()
                if not self._starts_operand():
                    raise self.fail(f"{token[1]!r} without a term after it")
            elif not self._starts_operand():
                raise self.fail(f"{token[1]!r} without a term before it")
            args.append(self.parse_and())
        return _combine(Or, args)

    def parse_and(self) -> Node:
        args = [self.parse_unary()]
        while self.peek() == ("word", "AND"):
            self.take()
            if not self._starts_operand():
                raise self.fail("'AND' without a term after it")
            args.append(self.parse_unary())
        return _combine(And, args)

    def parse_unary(self) -> Node:
        token = self.peek()
        if token == ("word", "NOT"):
            self.take()
            if not self._starts_operand():
                raise self.fail("'NOT' without a term after it")
            return Not(self.parse_unary())
        return self.parse_atom()

    def parse_atom(self) -> Node:
        if self.peek() is None:
            raise self.fail("a term is missing at the end")
        kind, text = self.take()
        if kind == "open":
            node = self.parse_or()
            if self.peek() != ("close", ")"):
                raise self.fail("'(' is not closed")
            self.take()
            return node
        if kind == "close":
            raise self.fail("')' without '('")
        if kind == "comma" or (kind == "word" and text in ("AND", "OR")):
            raise self.fail(f"{text!r} without a term before it")
        sign = ""
        if kind == "signed":  # +"a b" / -"a b"
            sign, text = text[0], text[2:-1]
        elif kind == "word" and text[0] in "+-":
            sign, text = text[0], text[1:]
        tokens = tuple(tokenize(text))
        if not tokens:
            raise self.fail(f"{(sign + text) or 'a phrase'!r} holds no letters or digits to search for")
        self.terms += 1
        if self.terms > MAX_TERMS:
            raise self.fail(f"more than {MAX_TERMS} terms")
        term = Term(tokens)
        return Not(term) if sign == "-" else _Required(term) if sign == "+" else term


@dataclass(frozen=True)
class _Required:
    """``+term`` while parsing: lifted into an AND around its OR group by :func:`_combine`."""

    arg: Node


def _combine(kind: type[And] | type[Or], args: list[Any]) -> Node:
    if kind is Or:
        required = [a.arg for a in args if isinstance(a, _Required)]
        excluded = [a for a in args if isinstance(a, Not)]
        optional = [a for a in args if not isinstance(a, (_Required, Not))]
        if required or (excluded and len(args) > 1):
            # Lucene's reading of +a b -c: a and not c must hold, b only adds relevance; without a
            # required term, the unsigned ones must match (one of them)
            parts: list[Node] = list(required)
            if optional:
                rest = optional[0] if len(optional) == 1 else Or(tuple(optional))
                parts.append(Optional(rest) if required else rest)
            parts += excluded
            return parts[0] if len(parts) == 1 else And(tuple(parts))
        return args[0] if len(args) == 1 else Or(tuple(args))
    if len(args) == 1:
        return args[0]
    return And(tuple(a.arg if isinstance(a, _Required) else a for a in args))


def parse_q(q: Any) -> Node:
    """A ``q`` (a string; or a list of strings, the basic extension's form: each element a term or
    phrase, joined by OR) as a query tree. Raises :class:`SearchError` naming ``q``."""
    if isinstance(q, (list, tuple)):  # the basic extension's list: each element one term (or phrase)
        if not q or not all(isinstance(v, str) for v in q):
            raise SearchError("q", f"{q!r}: expected a string or a list of strings")
        if len(q) > MAX_TERMS:
            raise SearchError("q", f"{len(q)} terms: at most {MAX_TERMS} accepted")
        terms = [Term(tuple(tokenize(v))) for v in q]
        if any(not t.tokens for t in terms):
            raise SearchError("q", f"{q!r}: a term holds no letters or digits to search for")
        return terms[0] if len(terms) == 1 else Or(tuple(terms))
    if not isinstance(q, str):
        raise SearchError("q", f"{q!r}: expected a string")
    if not q.strip():
        raise SearchError("q", "empty: give at least one term")
    if len(q) > MAX_Q:
        raise SearchError("q", f"{len(q)} characters: at most {MAX_Q} accepted")
    node = _Parser(q).parse()
    return node.arg if isinstance(node, _Required) else node


def positive_tokens(node: Node, negated: bool = False) -> list[str]:
    """The tokens that count for relevance: those of terms not under a NOT, each once, in order."""
    out: list[str] = []

    def walk(n: Node, neg: bool) -> None:
        if isinstance(n, Term):
            if not neg:
                out.extend(t for t in n.tokens if t not in out)
        elif isinstance(n, Not):
            walk(n.arg, not neg)
        elif isinstance(n, Optional):
            walk(n.arg, neg)
        else:
            for a in n.args:
                walk(a, neg)

    walk(node, negated)
    return out


def index_terms(node: Node) -> list[str]:
    """Every index term the query's evaluation reads (tokens and phrase bigrams), each once."""
    out: list[str] = []

    def walk(n: Node) -> None:
        if isinstance(n, Term):
            out.extend(t for t in n.index_terms if t not in out)
        elif isinstance(n, (Not, Optional)):
            walk(n.arg)
        else:
            for a in n.args:
                walk(a)

    walk(node)
    return out


def _phrase_in(tokens: Sequence[str], phrase: Sequence[str]) -> bool:
    k = len(phrase)
    return any(tuple(tokens[i:i + k]) == tuple(phrase) for i in range(len(tokens) - k + 1))


def has_phrase(node: Node) -> bool:
    if isinstance(node, Term):
        return len(node.tokens) > 2
    if isinstance(node, (Not, Optional)):
        return has_phrase(node.arg)
    return any(has_phrase(a) for a in node.args)


def matches(node: Node, item: Mapping[str, Any]) -> bool:
    """Whether the item satisfies the query (exact, phrases checked token by token)."""
    values = [tokenize(t) for t in item_texts(item)]
    present = {t for v in values for t in v}
    return _eval(node, present, values)


def _eval(node: Node, present: set[str], values: list[list[str]]) -> bool:
    if isinstance(node, Term):
        if len(node.tokens) == 1:
            return node.tokens[0] in present
        return all(t in present for t in node.tokens) and any(_phrase_in(v, node.tokens) for v in values)
    if isinstance(node, Not):
        return not _eval(node.arg, present, values)
    if isinstance(node, Optional):
        return True
    if isinstance(node, And):
        return all(_eval(a, present, values) for a in node.args)
    return any(_eval(a, present, values) for a in node.args)


def weight(tf: int, df: int, n_docs: int) -> float:
    """The relevance of one token to one item: ``(1 + ln tf) * ln(1 + N / df)`` (0 when absent)."""
    if tf <= 0 or df <= 0:
        return 0.0
    return (1.0 + math.log(tf)) * math.log(1.0 + n_docs / df)


def score(tokens: Sequence[str], terms: Mapping[str, int], df: Mapping[str, int], n_docs: int) -> float:
    """The item's relevance: the sum of :func:`weight` over ``tokens`` (the query's positive tokens,
    in their order, so every path adds the same floats in the same order)."""
    total = 0.0
    for token in tokens:
        total += weight(terms.get(token, 0), df.get(token, 0), n_docs)
    return total


@dataclass(frozen=True)
class TextQuery:
    """A parsed ``q``: the tree, the text as given, and the tokens that count for relevance."""

    q: str
    node: Node

    @classmethod
    def parse(cls, q: Any) -> TextQuery:
        node = parse_q(q)
        return cls(",".join(q) if isinstance(q, (list, tuple)) else q, node)

    @property
    def tokens(self) -> list[str]:
        return positive_tokens(self.node)

    def matches(self, item: Mapping[str, Any]) -> bool:
        return matches(self.node, item)


def corpus_df(items: Sequence[Mapping[str, Any]], tokens: Sequence[str]) -> tuple[dict[str, int], int]:
    """(df of each token, N) over a corpus of items: what the inverted index stores, for a brute force."""
    df = dict.fromkeys(tokens, 0)
    for item in items:
        terms = item_terms(item)
        for t in tokens:
            if terms.get(t):
                df[t] += 1
    return df, len(items)
