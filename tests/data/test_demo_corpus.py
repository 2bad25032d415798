import json
import os

import pytest
import zstandard

from megatron_dwm.data.demo_sources import SourceDoc, strip_wiki_markup
from tools.build_demo_corpus import lambada_style_passages, write_chunks

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DEMO_INDEXED = os.path.join(REPO, "demo_data", "indexed")


def test_wiki_markup_is_stripped():
    wikitext = (
        "{{Infobox|name={{nested|x}}}}'''Anarchism''' is a [[political philosophy]] "
        "of [[self-governance|self-governed]] societies.<ref>{{cite web|url=x}}</ref>\n"
        "==History==\n[[File:X.png|thumb|A [[caption]]]]Text &amp; more.<!-- note -->"
    )
    assert strip_wiki_markup(wikitext) == (
        "Anarchism is a political philosophy of self-governed societies.\nHistory\nText & more."
    )


def test_lambada_style_passages_end_on_a_word_seen_in_the_context():
    words = " ".join(f"word{i}" for i in range(45))
    chapter = SourceDoc(
        "Title\n\nCall me Ishmael. " + words + " and the whale. The sea took the whale. Nothing else.",
        "RedPajamaBook", "test",
    )
    passages = lambada_style_passages([chapter], min_words=10, max_words=80)
    assert passages == ["Call me Ishmael. " + words + " and the whale. The sea took the whale"]


def test_chunks_have_slimpajama_format(tmp_path):
    docs = [SourceDoc(f"text {i}", "RedPajamaC4" if i % 2 else "RedPajamaBook", f"s:{i}") for i in range(5)]
    paths = write_chunks(docs, str(tmp_path), docs_per_chunk=2, seed=0)
    assert [os.path.basename(p) for p in paths] == [f"example_train_{i}.jsonl.zst" for i in range(3)]
    records = [
        json.loads(line)
        for path in paths
        for line in zstandard.ZstdDecompressor().stream_reader(open(path, "rb")).read().decode().splitlines()
    ]
    assert sorted(r["text"] for r in records) == [d.text for d in docs]
    assert all(set(r) == {"text", "meta"} and r["meta"]["redpajama_set_name"].startswith("RedPajama") for r in records)


@pytest.mark.demo
@pytest.mark.skipif(not os.path.exists(os.path.join(DEMO_INDEXED, "data_path.txt")), reason="run `make demo-data` first")
def test_built_demo_data_loads():
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    from megatron_dwm.data import ContextTargetDataset, parse_data_path

    with open(os.path.join(DEMO_INDEXED, "data_path.txt")) as file:
        prefixes, weights = parse_data_path(file.read().split())
    assert {os.path.basename(p) for p in prefixes} >= {
        "RedPajamaBook_text_document", "RedPajamaCommonCrawl_text_document", "RedPajamaWikipedia_text_document",
    }
    assert all(len(IndexedDataset(p)) > 50 for p in prefixes) and all(w > 0 for w in weights)
    assert len(ContextTargetDataset(os.path.join(DEMO_INDEXED, "lambada_style_text_document"), 256)) >= 100
