#!/usr/bin/env python3
"""Reference token ids for wikitext-2's test split with the HF `tokenizers` library, to cross-check qtool's fixtures.

Run from the project root (on the GPU host, or anywhere `tokenizers` is installed):

    python3 scripts/gpu/reference_tokenize.py [--shared ../shared] [--out DIR] [TOKENIZER.json ...]

Encodes ../shared/data/wiki.test.raw (read as UTF-8, newlines untouched) with `add_special_tokens=False`, the same
ids qtool's `Tokenizer.encode(text, false)` gives, with each tokenizer.json: by default stories260K's, Llama 2's and
SmolLM2's from ../shared, plus any given. For each it prints the number of ids and the SHA-256 of the ids written one
per line; where java/test/resources/tokenize/ has a fixture for that tokenizer (made with llama.cpp's llama-tokenize)
it compares with it and reports MATCH or the first difference. With --out, the ids are written there as
NAME.ids.gz (one id per line, the fixtures' format). Exit status 1 when a fixture differs.
"""
import argparse
import gzip
import hashlib
import os
import sys
import time

try:
    from tokenizers import Tokenizer
    import tokenizers
except ImportError:
    sys.exit("reference_tokenize.py: the HF `tokenizers` package is not installed (pip install tokenizers)")

FIXTURES = {  # tokenizer.json (relative to --shared) -> fixture in java/test/resources/tokenize/
    "tokenizers/llama2/tokenizer.json": "wiki.test.raw.llama2.ids.gz",
    "models/smollm2-135m/tokenizer.json": "wiki.test.raw.smollm2-135m.ids.gz",
}
DEFAULTS = ["models/stories260K/tokenizer.json", "tokenizers/llama2/tokenizer.json", "models/smollm2-135m/tokenizer.json"]
EXPECTED_COUNTS = {  # what qtool's tests assert
    "models/stories260K/tokenizer.json": 809_289,
    "tokenizers/llama2/tokenizer.json": 335_687,
    "models/smollm2-135m/tokenizer.json": 303_415,
}


def ids_text(ids):
    return "".join(f"{i}\n" for i in ids).encode("ascii")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shared", default=os.environ.get("QTOOL_SHARED", "../shared"))
    ap.add_argument("--fixtures", default="java/test/resources/tokenize")
    ap.add_argument("--out", help="write NAME.ids.gz files here")
    ap.add_argument("tokenizer_json", nargs="*", help="more tokenizer.json files")
    args = ap.parse_args()

    text_path = os.path.join(args.shared, "data", "wiki.test.raw")
    with open(text_path, encoding="utf-8", newline="") as f:
        text = f.read()
    print(f"{text_path}: {len(text.encode('utf-8'))} bytes; tokenizers {tokenizers.__version__}")

    failed = False
    for rel in DEFAULTS + args.tokenizer_json:
        path = rel if os.path.isabs(rel) or rel in args.tokenizer_json else os.path.join(args.shared, rel)
        if not os.path.exists(path):
            print(f"{path}: absent, skipped")
            continue
        tok = Tokenizer.from_file(path)
        t0 = time.time()
        ids = tok.encode(text, add_special_tokens=False).ids
        took = time.time() - t0
        digest = hashlib.sha256(ids_text(ids)).hexdigest()
        line = f"{path}: {len(ids)} ids in {took:.1f} s, sha256 {digest}"
        expected = EXPECTED_COUNTS.get(rel)
        if expected is not None and expected != len(ids):
            line += f"  (qtool's tests expect {expected})"
        print(line)
        name = os.path.basename(os.path.dirname(os.path.abspath(path)))
        if args.out:
            os.makedirs(args.out, exist_ok=True)
            with open(os.path.join(args.out, f"{name}.ids.gz"), "wb") as f:
                f.write(gzip.compress(ids_text(ids), 9, mtime=0))
        fixture = FIXTURES.get(rel)
        if fixture and os.path.exists(os.path.join(args.fixtures, fixture)):
            with gzip.open(os.path.join(args.fixtures, fixture), "rb") as f:
                want = [int(x) for x in f.read().split()]
            if want == ids:
                print(f"  MATCH {fixture} ({len(want)} ids)")
            else:
                failed = True
                n = next((i for i, (a, b) in enumerate(zip(want, ids)) if a != b), min(len(want), len(ids)))
                print(f"  DIFF {fixture}: {len(want)} vs {len(ids)} ids, first difference at {n}: "
                      f"fixture {want[max(0, n - 3):n + 5]} tokenizers {ids[max(0, n - 3):n + 5]}")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
