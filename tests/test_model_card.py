"""The shipped model's card (``pipeline/shipped/model/MODEL_CARD.md``) stays a model card, not a results page
(issue 58): at most 12,000 characters, with every variant's tables in ``docs/results.md``; and its licence table
names every source the shipped network trained on, with that source's licence."""

from __future__ import annotations

import yaml

from .conftest import ROOT

MODEL = ROOT / "pipeline" / "shipped" / "model"
CARD = MODEL / "MODEL_CARD.md"
#: Licence of each public labelled source (``../shared/extra/README.md``), as the card's table words it.
LICENCES = {
    "dsb2018": "CC0",
    "tissue_fluo_e2f": "LGPL-3.0",
    "he_gbm40": "none stated",
    "he_tcga_glioma": "none stated",
    "he_cpm15": "none stated",
    "fluo_kromp2020": "CC0",
    "he_monuseg2018_train": "CC BY-NC-SA 4.0",
    "fluo_ctc": "Cell Tracking Challenge",
}
MAX_CHARS = 12_000


def trained_sources() -> set[str]:
    """Every source named by the training stages that made the shipped network."""
    sources: set[str] = set()
    for path in MODEL.glob("train_params*.yaml"):
        sources |= set(yaml.safe_load(path.read_text(encoding="utf-8"))["data"]["sources"])
    return sources


def test_the_card_is_at_most_12000_characters():
    n = len(CARD.read_text(encoding="utf-8"))
    assert n <= MAX_CHARS, f"MODEL_CARD.md has {n} characters (at most {MAX_CHARS}): move tables to docs/results.md"


def test_the_card_names_every_training_source_with_its_licence():
    card = CARD.read_text(encoding="utf-8")
    sources = trained_sources()
    assert sources, "no training stage found beside the shipped model"
    for source in sorted(sources):
        assert source in LICENCES, f"{source}: add its licence (../shared/extra/README.md) to this test and the card"
        rows = [line for line in card.splitlines() if line.startswith(f"| `{source}` |")]
        assert rows, f"the card's licence table has no row for {source}"
        assert any(LICENCES[source] in row for row in rows), f"{source}: licence {LICENCES[source]!r} not in its row"


def test_the_card_states_the_non_commercial_source_it_did_not_train_on():
    card = CARD.read_text(encoding="utf-8")
    assert "he_monuseg2018_train" in card and "CC BY-NC-SA 4.0" in card
