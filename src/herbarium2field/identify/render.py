"""Terminal output of ``h2f identify`` and ``h2f index`` (Rich)."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text


def confidence_bar(score: float, width: int = 12) -> Text:
    filled = round(max(0.0, min(1.0, score)) * width)
    return (
        Text("█" * filled, style="green") + Text("░" * (width - filled), style="dim") + Text(f" {score:6.1%}")
    )


def print_identification(console: Console, answer: dict[str, Any]) -> None:
    photos = answer["photos"]
    title = (
        f"{photos[0]['name']}"
        if len(photos) == 1
        else f"{len(photos)} photos of one plant (combined: mean of {answer['combine']})"
    )
    table = Table(title=title, title_justify="left", show_lines=False, header_style="bold")
    table.add_column("#", justify="right")
    table.add_column("species")
    table.add_column("class id", style="dim")
    table.add_column("confidence", no_wrap=True)
    table.add_column("best herbarium sheets (id: similarity)")
    for r in answer["results"]:
        sheets = ", ".join(f"{s['image_id']}: {s['similarity']:.2f}" for s in r["herbarium"]) or "-"
        name = Text(r["species"], style="italic" + (" bold" if r["rank"] == 1 else ""))
        if not r["with_pairs"]:
            name.append(" (herbarium only)", style="dim")
        if r.get("reserved"):
            name.append(f" [placed by its sheets, match {r['sheet_match']:.2f}]", style="dim")
        table.add_row(str(r["rank"]), name, r["class_id"], confidence_bar(r["score"]), sheets)
    console.print(table)
    genus_level = (answer.get("answer") or {}).get("level") == "genus"
    style = "bold green" if genus_level else {True: "bold green", False: "bold yellow", None: "bold"}[answer["confident"]]
    console.print(Text(answer["message"], style=style))
    g = answer.get("genus")
    if g:
        line = Text("genus: ") + Text(g["name"], style="italic") + Text(f" {g['score']:.1%}")
        if g.get("family"):
            line.append(f", family {g['family']}")
        line.append(f" ({len(g['species'])} species of it known to the model)", style="dim")
        console.print(line)
    if answer.get("checklist"):
        console.print(Text(f"restricted to a checklist of {answer['checklist']['species']} species "
                           f"({answer['checklist']['source']})", style="dim"))
    if answer.get("threshold"):
        console.print(Text(answer["threshold"]["text"], style="dim"))
    if answer["results"] and answer["results"][0]["herbarium"]:
        best = answer["results"][0]["herbarium"][0]
        console.print(Text(f"closest sheet of the top species: {best['path']}", style="dim"))
