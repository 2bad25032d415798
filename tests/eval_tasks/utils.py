"""Loads synthetic.jsonl (beside this file) for the local tasks, so they run offline from any
working directory: lm-eval resolves `!function` against this folder, whereas a relative
`data_files` path would be taken from the current directory."""

import json
from pathlib import Path

import datasets


def load_synthetic(**_metadata) -> datasets.DatasetDict:
    lines = Path(__file__).with_name("synthetic.jsonl").read_text().splitlines()
    return datasets.DatasetDict({"test": datasets.Dataset.from_list([json.loads(line) for line in lines])})
