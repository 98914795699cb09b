"""`compactcl list`: datasets, backbones, learners and built-in recipes."""

from __future__ import annotations


def add_parser(sub) -> None:
    p = sub.add_parser("list", help="show datasets, backbones, learners and built-in recipes")
    p.add_argument("--json", action="store_true", help="print as one JSON object")
    p.set_defaults(func=run)


def catalogue() -> dict[str, list[str]]:
    from ..data.datasets import list_datasets
    from ..learners import list_learners
    from ..models.backbones import list_backbones
    from ..pipeline.recipe import list_recipes

    return {"datasets": list_datasets(), "backbones": list_backbones(), "learners": list_learners(),
            "recipes": list_recipes()}


def run(args) -> int:
    import json

    cat = catalogue()
    if args.json:
        print(json.dumps(cat, indent=2))
    else:
        for kind, names in cat.items():
            print(f"{kind + ':':11s}{', '.join(names)}")
    return 0
