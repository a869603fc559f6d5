"""The model summary: a module tree built from the parameter table — parameters per module,
trainable or frozen, each module's share of the gradient norm and its health as the findings
name it (docs/report.md, "Model summary")."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import polars as pl

from ..findings import Finding

if TYPE_CHECKING:
    from ..analysis import Analysis

MAX_NODES = 400  # rows of the tree; deeper levels are left out beyond this, and the tree says so

# rule → the health status it gives the parameters it names
_STATUS = {
    "nonfinite-gradient": "non-finite",
    "dead-parameter": "dead",
    "unused-parameter": "unused",
    "vanishing-gradient": "vanishing",
    "zero-gradient": "zero",
}


@dataclass
class ModuleNode:
    name: str  # full dotted path ("" for the model itself)
    label: str  # the last part
    anchor: str
    numel: int = 0
    trainable: int = 0
    params: int = 0
    share: float | None = None  # of the sum over steps of squared gradient norms
    status: list[str] = field(default_factory=list)
    children: list[ModuleNode] = field(default_factory=list)

    @property
    def frozen(self) -> int:
        return self.numel - self.trainable


@dataclass
class ModuleTree:
    roots: list[ModuleNode]
    anchors: dict[str, str]  # parameter or module name → its node's anchor
    note: str = ""


def _statuses(findings: list[Finding]) -> pl.DataFrame:
    """(name, status) for every parameter a health finding names, as subject or in its evidence."""
    rows: list[tuple[str, str]] = []
    for f in findings:
        status = _STATUS.get(f.rule)
        if status is None:
            continue
        names = [f.subject] if f.subject else []
        for key in ("params", "params_nearest_output"):
            value = f.evidence.get(key)
            if isinstance(value, list):
                names += [v for v in value if isinstance(v, str)]
        rows += [(name, status) for name in names]
    return pl.DataFrame(rows, schema={"name": pl.String, "status": pl.String}, orient="row").unique()


def _grad_energy(analysis: Analysis) -> pl.DataFrame:
    grads = analysis.grads
    if "norm" not in grads.collect_schema().names():
        return pl.DataFrame(schema={"param_id": pl.Int32, "energy": pl.Float64})
    norm = pl.col("norm").cast(pl.Float64)
    return (
        grads.filter(norm.is_finite())
        .group_by("param_id")
        .agg((norm**2).sum().alias("energy"))
        .collect(engine="streaming")
        .with_columns(pl.col("param_id").cast(pl.Int32))
    )


def module_rows(analysis: Analysis) -> pl.DataFrame:
    """One row per module and parameter (every dotted prefix of every parameter name): `module`,
    `depth`, `leaf`, `numel`, `trainable`, `params`, `share`, `status` (sorted list)."""
    params = analysis.params
    if params.is_empty() or not {"param_id", "name"} <= set(params.columns):
        return pl.DataFrame()
    trainable = pl.col("requires_grad") if "requires_grad" in params.columns else pl.lit(True)
    numel = pl.col("numel").fill_null(0) if "numel" in params.columns else pl.lit(0)
    base = params.select(
        pl.col("param_id").cast(pl.Int32), "name", numel.cast(pl.Int64).alias("numel"), trainable.alias("trainable")
    )
    energy = _grad_energy(analysis)
    total = energy["energy"].sum() if energy.height else 0.0
    base = base.join(energy, on="param_id", how="left").join(_statuses(analysis.findings), on="name", how="left")
    parts = pl.col("name").str.split(".")
    prefixes = (
        base.with_columns(parts.alias("parts"))
        .with_columns(pl.int_ranges(1, pl.col("parts").list.len() + 1).alias("depth"))
        .explode("depth")
        .with_columns(
            pl.col("parts").list.slice(0, pl.col("depth")).list.join(".").alias("module"),
            (pl.col("depth") == pl.col("parts").list.len()).alias("leaf"),
        )
    )
    return (
        prefixes.group_by("module")
        .agg(
            pl.col("depth").first(),
            pl.col("leaf").all(),
            pl.struct("param_id", "numel", "trainable", "energy").unique().alias("members"),
            pl.col("status").drop_nulls().unique().sort().alias("status"),
        )
        .with_columns(
            pl.col("members").list.eval(pl.element().struct.field("numel")).list.sum().alias("numel"),
            pl.col("members")
            .list.eval(pl.element().filter(pl.element().struct.field("trainable")).struct.field("numel"))
            .list.sum()
            .alias("trainable"),
            pl.col("members").list.len().alias("params"),
            (
                pl.col("members").list.eval(pl.element().struct.field("energy")).list.sum() / total
                if total
                else pl.lit(None, pl.Float64)
            ).alias("share"),
        )
        .drop("members")
        .sort("module")
    )


def module_tree(analysis: Analysis) -> ModuleTree:
    rows = module_rows(analysis)
    if rows.is_empty():
        return ModuleTree([], {})
    note = ""
    if rows.height > MAX_NODES:
        # keep whole levels, shallowest first, so every shown module has its parent
        depth_counts = rows.group_by("depth").len().sort("depth")
        keep, shown = 0, 0
        for depth, count in depth_counts.iter_rows():
            if shown + count > MAX_NODES and keep:
                break
            keep, shown = depth, shown + count
        total = rows.height
        rows = rows.filter(pl.col("depth") <= keep)
        if rows.height > MAX_NODES:  # one level alone is too wide: its largest gradient shares
            rows = rows.sort(pl.col("share").fill_null(-1.0), "module", descending=[True, False]).head(MAX_NODES)
        note = f"showing {rows.height:,} of {total:,} modules and parameters (to depth {keep})"
    nodes: dict[str, ModuleNode] = {}
    roots: list[ModuleNode] = []
    for i, row in enumerate(rows.sort("depth", "module").iter_rows(named=True)):
        name = row["module"]
        node = ModuleNode(
            name,
            name.rsplit(".", 1)[-1],
            f"module-{i + 1}",
            row["numel"] or 0,
            row["trainable"] or 0,
            row["params"],
            row["share"],
            list(row["status"] or []),
        )
        nodes[name] = node
        parent = nodes.get(name.rsplit(".", 1)[0]) if "." in name else None
        (parent.children if parent is not None else roots).append(node)
    for node in nodes.values():
        node.children.sort(key=lambda n: _natural(n.label))
    roots.sort(key=lambda n: _natural(n.label))
    return ModuleTree(roots, {name: node.anchor for name, node in nodes.items()}, note)


def _natural(label: str) -> tuple[int, int | str]:
    """`2` before `10`, numbers before names: the order of nn.Sequential and ModuleList."""
    return (0, int(label)) if label.isdigit() else (1, label)
