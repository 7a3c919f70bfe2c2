"""The shipped models' cards (``pipeline/shipped/*/MODEL_CARD.md``) stay model cards, not results pages
(issue 58): at most 12,000 characters, with every variant's tables in ``docs/results.md``; and each licence
table names every source the shipped network trained on, its own stages' and those of the shipped model it
started from, with that source's licence."""

from __future__ import annotations

import pytest
import yaml

from pipeline.shipped import DEFAULT_MODEL, HE_MODEL, SHIPPED_MODELS, model_folder

#: Licence of each public labelled source (``../shared/extra/README.md``), as the card's table words it.
LICENCES = {
    "dsb2018": "CC0",
    "dsb2018_stained": "CC0",  # DSB2018's stained images (scripts/type_subset.py)
    "tissue_fluo_e2f": "LGPL-3.0",
    "he_gbm40": "none stated",
    "he_tcga_glioma": "none stated",
    "he_cpm15": "none stated",
    "fluo_kromp2020": "CC0",
    "he_monuseg2018_train": "CC BY-NC-SA 4.0",
    "fluo_ctc": "Cell Tracking Challenge",
}
MAX_CHARS = 12_000


def card(name: str) -> str:
    return (model_folder(name) / "MODEL_CARD.md").read_text(encoding="utf-8")


def trained_sources(name: str) -> set[str]:
    """Every source named by the training stages that made a shipped network, following ``train.init``
    into the shipped model a stage started from."""
    sources: set[str] = set()
    for path in model_folder(name).glob("**/train_params*.yaml"):  # its stained network's too
        params = yaml.safe_load(path.read_text(encoding="utf-8"))
        sources |= set(params["data"]["sources"])
        init = str(params.get("train", {}).get("init"))
        if init in SHIPPED_MODELS and init != name:
            sources |= trained_sources(init)
    return sources


@pytest.mark.parametrize("name", sorted(SHIPPED_MODELS))
def test_each_card_is_at_most_12000_characters(name):
    n = len(card(name))
    assert n <= MAX_CHARS, f"{name}: MODEL_CARD.md has {n} characters (at most {MAX_CHARS}): move tables to docs/results.md"


@pytest.mark.parametrize("name", sorted(SHIPPED_MODELS))
def test_each_card_names_every_training_source_with_its_licence(name):
    text, sources = card(name), trained_sources(name)
    assert sources, f"{name}: no training stage found beside the shipped model"
    for source in sorted(sources):
        assert source in LICENCES, f"{source}: add its licence (../shared/extra/README.md) to this test and the card"
        rows = [line for line in text.splitlines() if line.startswith(f"| `{source}` |")]
        assert rows, f"{name}: the card's licence table has no row for {source}"
        assert any(LICENCES[source] in row for row in rows), f"{name}: {source}: licence {LICENCES[source]!r} not in its row"


def test_the_default_did_not_train_on_the_non_commercial_source_and_its_card_says_so():
    assert "he_monuseg2018_train" not in trained_sources(DEFAULT_MODEL)
    text = card(DEFAULT_MODEL)
    assert "he_monuseg2018_train" in text and "CC BY-NC-SA 4.0" in text


def test_the_he_variant_trained_on_it_and_its_card_states_the_non_commercial_terms():
    assert "he_monuseg2018_train" in trained_sources(HE_MODEL)
    text = card(HE_MODEL)
    assert "CC BY-NC-SA 4.0" in text and "non-commercial" in text.lower() and "share-alike" in text.lower()
