"""Readable short forms of op and kernel names for chart labels (the full name stays on hover
and in the tables). Profiler traces mostly hold demangled C++ names, where what makes them
unreadable is template noise; the few mangled ones (cutlass kernels) are read as far as their
length-prefixed names go, so this folds template arguments and parameter lists and drops the namespaces of
templated names (`aten::mm` stays as it is; docs/report.md, "Names")."""

from __future__ import annotations

import re

MAX_LABEL = 60

# A C++ signature starts with a (qualified) identifier, then template arguments or parameters.
_CPP = re.compile(r"^(?:void )?[\w:~ ]*\w\s*[<(]")
_NAMESPACE = re.compile(r"\b(?:[A-Za-z_]\w*|\(anonymous namespace\))::")


def _fold(name: str, keep_depth: int) -> str:
    """`name` with bracketed text deeper than `keep_depth` replaced by `…` (`<…>`, `(…)`)."""
    out: list[str] = []
    depth = 0
    for char in name:
        if char in "<(":
            depth += 1
            if depth <= keep_depth + 1:
                out.append(char)
            if depth == keep_depth + 1:
                out.append("…")
        elif char in ">)":
            if depth <= keep_depth + 1:
                out.append(char)
            depth = max(0, depth - 1)
        elif depth <= keep_depth:
            out.append(char)
    return "".join(out)


_LENGTH = re.compile(r"\d+")


def _mangled_label(name: str) -> str | None:
    """`_ZN19cutlass_cudnn_train6KernelINS_…` → `cutlass_cudnn_train::Kernel<…>`: the
    length-prefixed names of an Itanium-mangled symbol up to its template arguments, read
    without demangling the rest (a label, not a full demangler)."""
    if not name.startswith("_Z"):
        return None
    at = 3 if name.startswith("_ZN") else 2
    parts: list[str] = []
    while at < len(name):
        length = _LENGTH.match(name, at)
        if length is None:
            break
        start = length.end()
        parts.append(name[start : start + int(length.group())])
        at = start + int(length.group())
    if not parts:
        return None
    rest = name[at:]
    return "::".join(parts) + ("<…>" if rest.startswith("I") else "") + "(…)"


def short_name(name: str, keep_depth: int = 0) -> str:
    """`void at::native::vectorized_elementwise_kernel<4, at::native::FillFunctor<float>>(int, …)`
    → `vectorized_elementwise_kernel<…>`; with `keep_depth=1` the first level of template
    arguments stays (`vectorized_elementwise_kernel<4, FillFunctor<…>>`)."""
    text = name.strip()
    mangled = _mangled_label(text)
    if mangled is not None:
        return mangled if len(mangled) <= MAX_LABEL else mangled[: MAX_LABEL - 1] + "…"
    if not _CPP.match(text):
        return text if len(text) <= MAX_LABEL else text[: MAX_LABEL - 1] + "…"  # `aten::mm` stays as it is
    if text.startswith("void "):
        text = text[5:]
    # `(anonymous namespace)::` would otherwise read as a parameter list
    text = text.replace("(anonymous namespace)::", "")
    # A trailing parameter list says nothing the name does not: drop it.
    if text.endswith(")") and "(" in text and not text.startswith("("):
        depth = 0
        for i in range(len(text) - 1, -1, -1):
            depth += {")": 1, "(": -1}.get(text[i], 0)
            if depth == 0:
                text = text[:i].rstrip() or text
                break
    text = _NAMESPACE.sub("", _fold(text, keep_depth)).replace(" >", ">")
    if len(text) > MAX_LABEL:
        text = text[: MAX_LABEL - 1] + "…"
    return text or name[:MAX_LABEL]


def short_names(names: list[str]) -> list[str]:
    """Short labels, distinct wherever the full names are: names whose shortest form collides
    keep their first level of template arguments, and a collision that remains is numbered."""
    labels = [short_name(n) for n in names]
    counts = {label: labels.count(label) for label in labels}
    labels = [short_name(n, 1) if counts[label] > 1 else label for n, label in zip(names, labels)]
    seen: dict[str, int] = {}
    distinct = []
    for label in labels:
        seen[label] = seen.get(label, 0) + 1
        distinct.append(label if labels.count(label) == 1 else f"{label} #{seen[label]}")
    return distinct
