"""Privacy of what gets attached to a ticket (docs/privacy.md).

`redact_analysis` returns a copy of an `Analysis` in which every string a report can show has
been cleaned: secrets always (values under secret-looking keys, token-shaped strings), and with
`pseudonymize=True` (`--redact`) hostnames, usernames and home paths replaced by stable
pseudonyms (`host-1`, `user-1`).

Cost: every distinct string (findings, run facts, small metadata, distinct values of the string
columns) is pooled into one polars Series and screened with one vectorised regex; only the few
that match go through the replacement chain. Replacing in a frame is one `replace` per column
that actually holds a changed value.
"""

from __future__ import annotations

import dataclasses
import getpass
import re
from collections.abc import Iterable
from functools import lru_cache
from pathlib import Path
from typing import Any

import polars as pl

from ..analysis import Analysis
from ..findings import Finding
from ..format import STEPS_SCHEMA
from ..run_facts import RunFacts

REDACTED = "[redacted]"

# --- secrets ------------------------------------------------------------------------------
# Every pattern is in the regex dialect shared by Python `re` and polars (Rust `regex`): no
# look-around, no back-references. Documented one by one in docs/privacy.md. Distinctive
# prefixes match anywhere, also glued to a name (`auth_eyJ…`); short ones need a word start.

TOKEN_PATTERNS = {
    "private key block": r"-----BEGIN [A-Z0-9 ]*PRIVATE KEY-----(?:[\s\S]*?-----END [A-Z0-9 ]*PRIVATE KEY-----|[\s\S]*)",
    "Hugging Face token": r"hf_[A-Za-z0-9]{30,}",
    "GitHub token": r"gh[pousr]_[A-Za-z0-9]{36,}",
    "GitHub fine-grained token": r"github_pat_[A-Za-z0-9_]{22,}",
    "AWS access key id": r"(?:AKIA|ASIA)[0-9A-Z]{16}",
    "Slack token": r"xox[baprs]-[A-Za-z0-9-]{10,}",
    "OpenAI-style key": r"\bsk-[A-Za-z0-9_-]{20,}",
    "JSON Web Token": r"eyJ[A-Za-z0-9_-]{4,}\.eyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]*",
    "Google API key": r"AIza[0-9A-Za-z_-]{35}",
    "bearer token": r"\b(?i:bearer)\s+[A-Za-z0-9._~+/-]{16,}=*",
}
TOKENS = "|".join(f"(?:{p})" for p in TOKEN_PATTERNS.values())

# `NAME=value`, `NAME: value`, `"NAME": "value"` where NAME ends in a secret word: an env dump or
# a config printed into free text. The value may be an HTTP auth scheme and its credentials,
# quoted, JSON-escaped-quoted or bare; a bare
# value must not start with `:` so C++ names like `ns::get_token::run` are left alone.
SECRET_NAME = r"[A-Za-z0-9_.-]*(?i:token|secret|password|passwd|passphrase|credentials?|apikey|api_key|_key|-key|auth|authorization)"
ASSIGNMENT = (
    r"(?P<k>\b" + SECRET_NAME + r"""\\?["']?\s*[:=]\s*)"""
    r"""(?:(?i:basic|bearer|digest|token)\s+[^\s,;"'}\]]+|"[^"]*"|'[^']*'|\\"(?:[^"\\]|\\[^"])*\\"|[^\s:,;&"'}\]][^\s,;&"'}\]]*)"""
)
# scheme://user:password@host and scheme://:password@host keep the scheme and the host. The
# password runs to the last `@` of the authority (a password may hold an unescaped `@`).
# One slash is enough: a URL passed as a path is normalised (`redis:/:pw@host`).
URL_CREDENTIALS = r"""(?P<s>\b[A-Za-z][A-Za-z0-9+.-]*:/{1,2})[^\s/?#@:"'<>]*:[^\s/?#"'<>]*@"""
# Signed-URL and session parameters whose names are not secret words: `?sig=` (Azure SAS),
# `X-Amz-Signature=`, `X-Goog-Signature=`, `&key=`, `?code=` (OAuth), `;jsessionid=`.
QUERY_SECRET = (
    r"""(?P<q>[?&;](?i:sig|signature|x-amz-signature|x-goog-signature|key|code|session|sessionid|jsessionid|sid|jwt|pwd|pass)=)"""
    r"""[^&#;\s"'<>]+"""
)

# Each pattern with what replaces it, in the order applied: `(pattern, kept group)`.
SECRET_REPLACEMENTS = ((ASSIGNMENT, "k", ""), (QUERY_SECRET, "q", ""), (URL_CREDENTIALS, "s", "@"), (TOKENS, "", ""))
SECRET_ANY = "|".join(f"(?:{p})" for p, _, _ in SECRET_REPLACEMENTS)
_SECRET_STEPS = tuple(
    (re.compile(p), (rf"\g<{group}>" if group else "") + REDACTED + tail) for p, group, tail in SECRET_REPLACEMENTS
)


def redact_secrets(text: str) -> str:
    """One string with its secrets replaced, as `redact_analysis` does in bulk (for the CLI's
    error and warning lines, which quote paths and names from the input)."""
    for pattern, replacement in _SECRET_STEPS:
        text = pattern.sub(replacement, text)
    return text


# Dict keys judged by their components (`apiKey` → api, key; `HF_TOKEN` → hf, token).
_KEY_PARTS = re.compile(r"[A-Z]?[a-z]+|[A-Z]+(?![a-z])|[0-9]+")
SECRET_WORDS = frozenset(
    {
        "token",
        "secret",
        "secrets",
        "password",
        "passwords",
        "passwd",
        "passphrase",
        "pwd",
        "credential",
        "credentials",
        "auth",
        "authorization",
        "apikey",
        "cookie",
    }
)


@lru_cache(maxsize=4096)
def is_secret_key(key: str) -> bool:
    """True for keys whose value must never be shown: a component is a secret word, or the key
    ends in `_KEY`/`Key` (api_key, AWS_SECRET_ACCESS_KEY, privateKey; not `keys`, not `key`)."""
    parts = [p.lower() for p in _KEY_PARTS.findall(key)]
    return any(p in SECRET_WORDS for p in parts) or (len(parts) > 1 and parts[-1] == "key")


def _blank(value: Any, table: dict[str, str]) -> Any:
    """Everything under a secret key; nested keys are cleaned like any string."""
    if value is None or isinstance(value, bool):
        return value  # nothing to hide, and "was it set?" stays answerable
    if isinstance(value, dict):
        return {table.get(k, k) if isinstance(k, str) else k: _blank(v, table) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_blank(v, table) for v in value]
    return REDACTED


# --- pseudonyms ---------------------------------------------------------------------------

HOST_KEYS = frozenset({"hostname", "hostnames", "host_name", "host", "nodename", "node_name"})
USER_KEYS = frozenset({"user", "username", "user_name", "logname"})
# Shared accounts say nothing about a person and are ordinary words: pseudonymised only inside
# home paths, never as bare words.
GENERIC_USERS = frozenset({"root", "user", "admin", "ubuntu", "jovyan", "runner", "nobody", "ec2-user"})
_USER_CHARS = r"[A-Za-z0-9._-]+"
_HOME_PREFIXES = ("/home/", "/Users/", "/usr/home/", "\\Users\\", "torchinductor_")
_HOME = "|".join(map(re.escape, _HOME_PREFIXES))
HOME_USER = f"(?:{_HOME}){_USER_CHARS}"
ROOT_HOME = r"(?:^|[^A-Za-z0-9._/-])/root(?:[^A-Za-z0-9._-]|$)"
# torch's tensorboard_trace_handler names files `{host}_{pid}.{ns}.pt.trace.json[.gz]`; the
# recorder prefixes `rank{R}_`.
TRACE_FILE_HOST = r"(?:^|[/\\\s])(?:rank[0-9]+_)?([^/\\\s]+?)_[0-9]+\.[0-9]+\.pt\.trace\.json"


class Pseudonyms:
    """Known hostnames → host-N (in order of the lowest rank they appear on, then as found) and
    usernames → user-N (sorted by name), replaced in one regex pass so no replacement is
    replaced again."""

    def __init__(self, hosts: list[str], users: Iterable[str]):
        self.hosts: dict[str, str] = {}
        count = 0
        for host in (h.lower() for h in hosts):
            if host in self.hosts:
                continue
            count += 1
            # The same machine as the recorder's file names write it (`.` → `_`), and its short name.
            for variant in (host, re.sub(r"[^a-z0-9_-]", "_", host), host.split(".")[0]):
                if len(variant) >= 2:
                    self.hosts.setdefault(variant, f"host-{count}")
        self.users = {name: f"user-{i + 1}" for i, name in enumerate(sorted(set(users)))}
        bare_users = [u for u in self.users if u not in GENERIC_USERS and len(u) >= 3]

        def by_length(names: Iterable[str]) -> list[str]:
            return sorted(names, key=lambda n: (-len(n), n))  # the longest name wins at a position

        alternatives = [
            f"(?P<home>{_HOME})(?P<huser>{_USER_CHARS})",
            r"(?<![A-Za-z0-9._/-])(?P<root>/root)(?![A-Za-z0-9._-])",
        ]
        if self.hosts:
            alternatives.append(
                r"(?<![A-Za-z0-9])(?P<host>(?i:"
                + "|".join(map(re.escape, by_length(self.hosts)))
                + r"))(?![A-Za-z0-9])"
            )
        if bare_users:
            alternatives.append(
                r"(?<![A-Za-z0-9])(?P<user>" + "|".join(map(re.escape, by_length(bare_users))) + r")(?![A-Za-z0-9])"
            )
        self.pattern = re.compile("|".join(alternatives))
        # A cheap literal screen (Aho-Corasick in polars) for the strings worth the regex.
        self.literals = sorted(set(self.hosts) | set(bare_users) | set(_HOME_PREFIXES) | {"/root"})

    def _one(self, match: re.Match[str]) -> str:
        if match.group("home"):
            user = match.group("huser")
            return match.group("home") + self.users.get(user, user)
        if match.group("root"):
            return "/home/" + self.users.get("root", "root")
        if match.lastgroup == "host":
            return self.hosts[match.group("host").lower()]
        return self.users[match.group("user")]

    def sub(self, text: str) -> str:
        return self.pattern.sub(self._one, text)


# --- walking Python structures ------------------------------------------------------------

_FRAMES = ("steps", "params", "ops", "kernels", "step_times")


@dataclasses.dataclass
class _Scan:
    """Every string of the small structures, plus what they say about hosts and users."""

    texts: set[str] = dataclasses.field(default_factory=set)
    hosts: list[tuple[float, int, str]] = dataclasses.field(default_factory=list)  # (rank, seen, name)
    users: set[str] = dataclasses.field(default_factory=set)

    def walk(self, value: Any, key: str | None = None, rank: float = float("inf")) -> None:
        if isinstance(value, str):
            self.texts.add(value)
            if key in HOST_KEYS:
                self.hosts.append((rank, len(self.hosts), value))
            elif key in USER_KEYS:
                self.users.add(value)
        elif isinstance(value, Path):
            self.texts.add(str(value))
        elif isinstance(value, dict):
            own = value.get("rank")
            if isinstance(own, int) and not isinstance(own, bool):
                rank = own
            for k, v in value.items():
                if isinstance(k, str):
                    self.texts.add(k)
                self.walk(v, k.lower() if isinstance(k, str) else None, rank)
        elif isinstance(value, (list, tuple)):
            for v in value:
                self.walk(v, key, rank)
        elif isinstance(value, Finding):
            self.walk([value.title, value.message, value.subject, value.suggestion, value.evidence], None, rank)


def _rebuild(value: Any, table: dict[str, str]) -> Any:
    if isinstance(value, str):
        return table.get(value, value)
    if isinstance(value, Path):
        return Path(table.get(str(value), str(value)))
    if isinstance(value, dict):
        out: dict[Any, Any] = {}
        for k, v in value.items():
            new_key = _unique(table.get(k, k), out) if isinstance(k, str) else k
            out[new_key] = _blank(v, table) if isinstance(k, str) and is_secret_key(k) else _rebuild(v, table)
        return out
    if isinstance(value, list):
        return [_rebuild(v, table) for v in value]
    if isinstance(value, tuple):
        return tuple(_rebuild(v, table) for v in value)
    if isinstance(value, Finding):
        return dataclasses.replace(
            value,
            title=_rebuild(value.title, table),
            message=_rebuild(value.message, table),
            subject=_rebuild(value.subject, table),
            suggestion=_rebuild(value.suggestion, table),
            evidence=_rebuild(value.evidence, table),
        )
    return value


def _unique(name: str, taken: Iterable[str]) -> str:
    """Two names that clean to the same text (two different tokens) must stay two entries."""
    taken = set(taken)
    if name not in taken:
        return name
    n = 2
    while f"{name} #{n}" in taken:
        n += 1
    return f"{name} #{n}"


# --- strings in bulk ----------------------------------------------------------------------


def _string_columns(frame: pl.DataFrame) -> list[str]:
    return [c for c, t in frame.schema.items() if t == pl.String or t == pl.Categorical]


def _distinct(frame: pl.DataFrame, column: str) -> pl.Series:
    values: pl.Series = frame.get_column(column).cast(pl.String).unique().drop_nulls()
    return values


def _clean_pool(pool: pl.Series, names: Pseudonyms | None) -> dict[str, str]:
    """old → new for every string of the pool that changes."""
    frame = pl.DataFrame({"old": pool})
    suspect = pl.col("old").str.contains(SECRET_ANY)
    if names is not None:
        suspect = suspect | pl.col("old").str.contains_any(names.literals, ascii_case_insensitive=True)
    new = pl.col("old")
    for pattern, group, tail in SECRET_REPLACEMENTS:
        new = new.str.replace_all(pattern, ("${" + group + "}" if group else "") + REDACTED + tail)
    hits = frame.filter(suspect).with_columns(new=new)
    olds, news = hits["old"].to_list(), hits["new"].to_list()
    if names is not None:
        news = [names.sub(text) for text in news]  # only the screened strings, not every row
    return {o: n for o, n in zip(olds, news) if o != n}


def _discover(scan: _Scan, pool: pl.Series) -> Pseudonyms:
    hosts = [name for _, _, name in sorted(scan.hosts) if name]
    found = pool.str.extract(TRACE_FILE_HOST, 1).drop_nulls().unique().sort().to_list()
    users = set(scan.users)
    homes = pool.str.extract_all(HOME_USER).explode().drop_nulls().unique().to_list()
    for home in homes:
        for prefix in _HOME_PREFIXES:
            if home.startswith(prefix):
                users.add(home[len(prefix) :])
    if pool.str.contains(ROOT_HOME).any():
        users.add("root")
    try:
        me = getpass.getuser()
    except Exception:  # no login name (some containers): nothing to add
        me = None
    if me and pool.str.contains_any([me]).any():
        users.add(me)
    return Pseudonyms(hosts + found, users)


def redact_analysis(analysis: Analysis, pseudonymize: bool) -> Analysis:
    """A copy of `analysis` whose reportable strings are cleaned; the input is not modified.

    Cleaned: findings, run facts (keys and values), `path`, the string columns of the frames and
    the user-scalar column names of `steps`: everything a reporter can show.
    """
    frames: dict[str, pl.DataFrame] = {name: getattr(analysis, name) for name in _FRAMES}
    run = analysis.run.to_dict()

    scan = _Scan()
    scan.walk(run)
    scan.walk(analysis.findings)
    scan.walk(str(analysis.path))
    scan.walk([list(o.files) for o in analysis.trace_origins.values()] + [t.lanes for t in analysis.timelines])
    timeline_frames = {f"timeline {i}": t.events for i, t in enumerate(analysis.timelines)}
    user_scalars = [c for c in frames["steps"].columns if c not in STEPS_SCHEMA.names and c != "rank"]
    scan.texts.update(user_scalars)

    distinct = {
        (name, c): _distinct(f, c) for name, f in {**frames, **timeline_frames}.items() for c in _string_columns(f)
    }
    pool = pl.concat([pl.Series(sorted(scan.texts), dtype=pl.String), *distinct.values()]).unique()
    names = _discover(scan, pool) if pseudonymize else None
    table = _clean_pool(pool, names)

    cleaned: dict[str, pl.DataFrame] = {}
    changed = pl.Series(list(table), dtype=pl.String)
    for name, frame in frames.items():
        updates = []
        for column in _string_columns(frame):
            if distinct[(name, column)].is_in(changed.implode()).any():
                expr = pl.col(column).cast(pl.String).replace(table)
                updates.append(expr.cast(frame.schema[column]) if frame.schema[column] != pl.String else expr)
        frame = frame.with_columns(updates) if updates else frame
        if name == "steps":
            renames: dict[str, str] = {}
            for column in user_scalars:
                if column in table:
                    renames[column] = _unique(table[column], set(frame.columns) | set(renames.values()))
            frame = frame.rename(renames) if renames else frame
        cleaned[name] = frame

    # The report's timelines (op names, lanes) and the trace files they point into.
    timelines = [
        dataclasses.replace(
            t,
            lanes=[table.get(lane, lane) for lane in t.lanes],
            events=t.events.with_columns(pl.col("name").replace(table)),
        )
        for t in analysis.timelines
    ]
    origins = {
        rank: dataclasses.replace(o, files=tuple(table.get(f, f) for f in o.files))
        for rank, o in analysis.trace_origins.items()
    }
    return dataclasses.replace(
        analysis,
        path=Path(table.get(str(analysis.path), str(analysis.path))),
        timelines=timelines,
        trace_origins=origins,
        findings=[_rebuild(f, table) for f in analysis.findings],
        run=RunFacts.from_dict(_rebuild(run, table)),
        steps=cleaned["steps"],
        params=cleaned["params"],
        ops=cleaned["ops"],
        kernels=cleaned["kernels"],
        step_times=cleaned["step_times"],
    )
