"""Markdown table of the runs of an experiment script (common.sh's run()): ``python experiments/table.py RESULTS_DIR``.

One row per run: its unseen test metrics, and where the run trained a model its best seen-class val mAP@all and the
step of it (the checkpoint the run kept).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

COLUMNS = [("map_all", "mAP@all"), ("map_all_voc", "mAP@all (VOC)"), ("map_200", "mAP@200"), ("prec_100", "P@100"),
           ("acc_1", "Acc@1"), ("acc_5", "Acc@5"), ("acc_10", "Acc@10")]


def main(folder: Path) -> None:
    runs = sorted(p for p in folder.glob("*.json") if not p.stem.endswith(("-retrieval", "-train")))
    print("| run | " + " | ".join(title for _, title in COLUMNS) + " | val mAP@all (step) | relation pairs | seconds |")
    print("|---" * (len(COLUMNS) + 4) + "|")
    for path in runs:
        metrics = json.loads(path.read_text())
        retrieval_path = path.with_name(f"{path.stem}-retrieval.json")
        retrieval = json.loads(retrieval_path.read_text()) if retrieval_path.is_file() else {}
        cells = [f"{metrics[key]:.3f}" if key in metrics else "–" for key, _ in COLUMNS]
        print(f"| {path.stem} | " + " | ".join(cells)
              + f" | {best_val(path.with_name(f'{path.stem}-val.tsv'))}"
              + f" | {retrieval.get('relation_pairs_scored', '–')} | {retrieval.get('seconds', '–')} |")


def best_val(curve: Path) -> str:
    """The best val mAP@all of a run's curve (dvclive's ``step<TAB>map_all`` rows) and its step; the first on ties,
    as the training loop keeps it."""
    if not curve.is_file():
        return "–"
    rows = [line.split("\t") for line in curve.read_text().splitlines()[1:] if line.strip()]
    if not rows:
        return "–"
    step, score = max(((int(step), float(score)) for step, score in rows), key=lambda row: (row[1], -row[0]))
    return f"{score:.3f} ({step})"


if __name__ == "__main__":
    main(Path(sys.argv[1]))
