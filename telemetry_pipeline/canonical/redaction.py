"""Secrets and personal data in text: found by pattern, replaced by a typed placeholder `[REDACTED:<kind>]`.

Secrets never leave, whatever `EXPORT_CONTENT` says; personal data leaves only under `full` (`content`). The
patterns are written once and serve two engines: Python's `re` replaces (every value that may leave goes through
`redact`), and DuckDB's RE2 finds the rows that need it (`candidates`), so a batch whose rows hold nothing of the
kind costs one vectorised scan. So a pattern uses only what both engines read: no look-around, no back-references.
Where neighbours decide (an AWS secret key is 40 characters of base64 said to be one by `aws` or `secret` before
it), the part replaced is the group named `s`; without one, the whole match is replaced. A `check` confirms a
candidate in Python (a card number's Luhn digit, an IBAN's checksum), so numbers that merely look like one stay.

The secret patterns follow the formats their vendors publish, as detect-secrets' plugins (AWS, GitHub, Slack,
Stripe, SendGrid, JWT, private keys, basic auth in URLs, keyword assignments) and gitleaks' rules (OpenAI project
and service keys, Anthropic, Google, Hugging Face, GitLab) state them. Why not detect-secrets itself at run time,
and how our patterns are checked against its verdicts: test_content.py and docs/MINING.md ("What leaves your machine").
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable
from dataclasses import dataclass, field


def _luhn(number: str) -> bool:
    digits = [int(c) for c in number if c.isdigit()]
    if not 13 <= len(digits) <= 19:
        return False
    total = sum(d if i % 2 == 0 else (d * 2 - 9 if d > 4 else d * 2) for i, d in enumerate(reversed(digits)))
    return total % 10 == 0


def _iban(candidate: str) -> bool:
    compact = candidate.replace(" ", "")
    if not 15 <= len(compact) <= 34:
        return False
    moved = compact[4:] + compact[:4]
    return int("".join(str(int(c, 36)) for c in moved)) % 97 == 1


def _phone(candidate: str) -> bool:
    return 7 <= sum(c.isdigit() for c in candidate) <= 15


@dataclass(frozen=True)
class Pattern:
    kind: str  # in the placeholder: [REDACTED:<kind>]
    regex: str  # Python `re` and RE2 alike; `(?i)` only at the start
    check: Callable[[str], bool] | None = field(default=None, compare=False)  # confirms the replaced part

    @property
    def placeholder(self) -> str:
        return f"[REDACTED:{self.kind}]"


_END = r"(?:[^A-Za-z0-9_\-]|$)"  # what may follow a token: not another token character

SECRETS: tuple[Pattern, ...] = (
    Pattern("private_key", r"-----BEGIN[A-Z ]{0,40}PRIVATE KEY(?: BLOCK)?-----[\s\S]*?-----END[A-Z ]{0,40}PRIVATE "
                           r"KEY(?: BLOCK)?-----"),
    # Cut off before its end (a value cut at a bound): the rest of the value is the key.
    Pattern("private_key", r"-----BEGIN[A-Z ]{0,40}PRIVATE KEY(?: BLOCK)?-----[\s\S]*"),
    Pattern("anthropic_key", r"sk-ant-[A-Za-z0-9]{2,12}-[A-Za-z0-9_\-]{20,}"),
    Pattern("openai_key", r"sk-(?:proj-|svcacct-|admin-|None-)?[A-Za-z0-9_\-]{20,}"),
    Pattern("aws_access_key", r"(?P<s>(?:A3T[A-Z0-9]|AKIA|ABIA|ACCA|ASIA)[0-9A-Z]{16})" + _END),
    Pattern("aws_secret_key", r"(?i)(?:aws|secret)[^\n]{0,60}?(?:[^A-Za-z0-9/+]|^)(?P<s>[A-Za-z0-9/+]{40})"
                              r"(?:[^A-Za-z0-9/+=]|$)"),
    Pattern("github_token", r"(?:ghp|gho|ghu|ghs|ghr)_[A-Za-z0-9_]{36,}"),
    Pattern("github_token", r"github_pat_[A-Za-z0-9_]{22,}"),
    Pattern("gitlab_token", r"glpat-[A-Za-z0-9_\-]{20,}"),
    Pattern("google_api_key", r"AIza[0-9A-Za-z_\-]{35}"),
    Pattern("huggingface_token", r"hf_[A-Za-z]{34}"),
    Pattern("slack_token", r"xox[abposr]-[A-Za-z0-9\-]{10,}"),
    Pattern("slack_webhook", r"https://hooks\.slack\.com/services/[A-Za-z0-9_/]+"),
    Pattern("stripe_key", r"(?:sk|rk)_(?:live|test)_[0-9a-zA-Z]{24,}"),
    Pattern("sendgrid_key", r"SG\.[a-zA-Z0-9_\-]{22}\.[a-zA-Z0-9_\-]{43}"),
    Pattern("jwt", r"eyJ[A-Za-z0-9_\-]{8,}\.eyJ[A-Za-z0-9_\-]{8,}\.[A-Za-z0-9_\-]{8,}"),
    Pattern("bearer_token", r"(?i)bearer\s+(?P<s>[A-Za-z0-9._~+/=\-]{16,})"),
    Pattern("url_password", r"://[^:/?#\[\]@\s\"'\\]{1,256}:(?P<s>[^@/\s\"'\\]{1,256})@"),
    # `password=…`, `"api_key": "…"`, `client_secret: …`: the value of a key that says it is a secret.
    Pattern("password", r"(?i)(?:password|passwd|pwd|secret|api[_\-]?key|apikey|access[_\-]?token|auth[_\-]?token"
                        r"|client[_\-]?secret|private[_\-]?key)\\?[\"']?\s*[:=]\s*\\?[\"']?(?P<s>[^\s\"'\\,;&}]{6,})"),
)

# Numbers in ids are not personal data: a candidate touching a letter, a digit or a hyphen (a UUID's groups, a
# hex id, a key) is part of something else.
_ALONE_BEFORE, _ALONE_AFTER = r"(?:[^A-Za-z0-9\-+]|^)", r"(?:[^A-Za-z0-9\-]|$)"

PERSONAL: tuple[Pattern, ...] = (
    Pattern("email", r"[A-Za-z0-9._%+\-]{1,64}@[A-Za-z0-9\-]{1,63}(?:\.[A-Za-z0-9\-]{1,63})*\.[A-Za-z]{2,24}"),
    Pattern("iban", _ALONE_BEFORE + r"(?P<s>[A-Z]{2}[0-9]{2}(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,4})?)"
                    + _ALONE_AFTER, check=_iban),
    Pattern("card", _ALONE_BEFORE + r"(?P<s>[0-9]{4}(?:[ \-]?[0-9]{4}){2}[ \-]?[0-9]{1,7})" + _ALONE_AFTER,
            check=_luhn),
    # International (+49 30 12345678, +1 (555) 010-9999) and North-American (555-010-9999, (555) 010-9999) numbers.
    Pattern("phone", r"\+[0-9]{1,3}[ .\-]?(?:\([0-9]{1,4}\)[ .\-]?)?[0-9]{1,4}(?:[ .\-]?[0-9]{2,5}){1,4}",
            check=_phone),
    Pattern("phone", _ALONE_BEFORE + r"(?P<s>(?:\([0-9]{3}\) ?|[0-9]{3}[.\-])[0-9]{3}[.\-][0-9]{4})" + _ALONE_AFTER),
)

_COMPILED = {p: re.compile(p.regex) for p in (*SECRETS, *PERSONAL)}


def redact(value: str, personal: bool = True) -> str:
    """`value` with every secret (and, with `personal`, every piece of personal data) replaced by its
    placeholder."""
    for pattern in (*SECRETS, *PERSONAL) if personal else SECRETS:
        value = _COMPILED[pattern].sub(functools.partial(_replace, pattern=pattern), value)
    return value


def _replace(match: re.Match[str], pattern: Pattern) -> str:
    whole = match.group(0)
    group = "s" if "s" in match.re.groupindex else 0
    part = match.group(group)
    if pattern.check is not None and not pattern.check(part):
        return whole
    start, end = match.start(group) - match.start(), match.end(group) - match.start()
    return whole[:start] + pattern.placeholder + whole[end:]


def candidates(personal: bool) -> str:
    """One RE2 pattern that matches wherever `redact` may change something (a superset: `check` may turn a
    candidate down). Case-insensitive alternatives keep their flag as a group flag."""
    parts = [_unflagged(p.regex) for p in (*SECRETS, *(PERSONAL if personal else ()))]
    return "|".join(f"(?:{part})" for part in parts)


def _unflagged(regex: str) -> str:
    plain = re.sub(r"\(\?P<s>", "(", regex)  # RE2 reads named groups too; one name used twice it refuses
    return f"(?i:{plain[4:]})" if plain.startswith("(?i)") else plain
