"""Markdown table of the runs of experiments/quality.sh: ``python experiments/table.py RESULTS_DIR``."""

from __future__ import annotations

import json
import sys
from pathlib import Path

COLUMNS = [("map_all", "mAP@all"), ("map_all_voc", "mAP@all (VOC)"), ("map_200", "mAP@200"), ("prec_100", "P@100"),
           ("acc_1", "Acc@1"), ("acc_5", "Acc@5"), ("acc_10", "Acc@10")]


def main(folder: Path) -> None:
    runs = sorted(p for p in folder.glob("*.json") if not p.stem.endswith("-retrieval"))
    print("| run | " + " | ".join(title for _, title in COLUMNS) + " | relation pairs | seconds |")
    print("|---" * (len(COLUMNS) + 3) + "|")
    for path in runs:
        metrics = json.loads(path.read_text())
        retrieval_path = path.with_name(f"{path.stem}-retrieval.json")
        retrieval = json.loads(retrieval_path.read_text()) if retrieval_path.is_file() else {}
        cells = [f"{metrics[key]:.3f}" if key in metrics else "–" for key, _ in COLUMNS]
        print(f"| {path.stem} | " + " | ".join(cells)
              + f" | {retrieval.get('relation_pairs_scored', '–')} | {retrieval.get('seconds', '–')} |")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
