"""Small RULER data (essays, SQuAD v2 and HotpotQA layouts) written to a folder: the tests' stand-in
for /work/shared/data, also what tests/fixtures/make_ruler_upstream.py hands upstream's scripts for
the byte-tokenizer parity cases, so both read the same documents."""

from __future__ import annotations

import json
from pathlib import Path

ESSAY = (
    "The best way to get startup ideas is not to try to think of them. Look for problems, preferably "
    "problems you have yourself! Why do so many founders build things no one wants? Because they begin "
    "by trying to think of startup ideas. That m.o. is doubly dangerous. "
)


def write_ruler_data(root: Path) -> Path:
    """root/paul_graham_essays/*.txt, root/squad_v2/dev-v2.0.json, root/hotpotqa/hotpot_dev_distractor_v1.json."""
    essays = root / "paul_graham_essays"
    essays.mkdir(parents=True)
    for i in range(3):
        (essays / f"essay{i}.txt").write_text(f"Essay number {i}. " + ESSAY * 40)
    articles = []
    for a in range(30):
        paragraphs = []
        for p in range(5):
            city = f"Town{a}x{p}"
            context = f"The river festival of article {a} paragraph {p} is held in {city} every spring. " * 3
            qas = [
                {"question": f"Where is the festival of article {a} paragraph {p} held?", "id": f"{a}-{p}",
                 "answers": [{"text": city, "answer_start": 0}, {"text": f"in {city}", "answer_start": 0}],
                 "is_impossible": False},
                {"question": "Unanswerable?", "id": f"{a}-{p}-x", "answers": [], "is_impossible": True},
            ]  # fmt: skip
            paragraphs.append({"context": context, "qas": qas})
        articles.append({"title": f"Article{a}", "paragraphs": paragraphs})
    (root / "squad_v2").mkdir()
    (root / "squad_v2" / "dev-v2.0.json").write_text(json.dumps({"version": "v2.0", "data": articles}))
    hotpot = []
    for q in range(30):
        titles = [f"Page{q}-{k}" for k in range(10)]
        sentences = [
            [f"Page {q}-{k} says the capital of Land{q} is Capital{q}{k}. ", "Nothing else."] for k in range(10)
        ]
        hotpot.append({"question": f"What is the capital of Land{q} on page {q}-3?", "answer": f"Capital{q}3",
                       "type": "bridge", "level": "easy", "supporting_facts": {"title": [titles[3]], "sent_id": [0]},
                       "context": {"title": titles, "sentences": sentences}})  # fmt: skip
    (root / "hotpotqa").mkdir()
    (root / "hotpotqa" / "hotpot_dev_distractor_v1.json").write_text(json.dumps(hotpot))
    return root
