"""The main job: run a small sgflow program on the embedded default model and print what it does.

    sgflow demo [--model PATH] [--max-tokens N]

It shows free generation, `select`, a regex- and a JSON-schema-constrained `gen`, a fork that runs
branches in parallel, and the radix cache serving the prefix those calls share.
"""

from __future__ import annotations

import argparse
import json
import time

import sgflow as sgl

PERSON_SCHEMA = {
    "type": "object",
    "properties": {"name": {"type": "string", "maxLength": 16}, "age": {"type": "integer", "minimum": 0, "maximum": 120},
                   "city": {"type": "string", "maxLength": 16}},
    "required": ["name", "age", "city"],
}


@sgl.function
def tour(s, question):
    s += "Q: " + question + " A:"
    s += sgl.gen("answer", max_tokens=16, stop="\n")
    s += "\nQ: Is Paris in France? A:"
    s += sgl.select("yes_no", choices=[" yes", " no"])
    s += "\nThe meeting is on"
    s += sgl.gen("date", regex=r" (19|20)\d{2}-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9])")
    s += "\nA person as JSON: "
    s += sgl.gen("person", json_schema=json.dumps(PERSON_SCHEMA), max_tokens=48)
    forks = s.fork(2)
    for fork, start in zip(forks, ("The cat", "The dog")):
        fork += "\n" + start
        fork += sgl.gen("sentence", max_tokens=16, stop="\n")
    s["sentences"] = [f["sentence"] for f in forks]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="sgflow demo", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="local HF model directory (default: the embedded model)")
    parser.add_argument("--max-tokens", type=int, default=None, help="cap every gen's max_tokens")
    args = parser.parse_args(argv)

    start = time.perf_counter()
    backend = sgl.Engine(model_path=args.model)
    try:
        info = backend.engine.get_model_info()
        print(f"model: {info['model_path']} ({info['architecture']}, {info['device']})")
        state = tour.run(question="What is the capital of France?", temperature=0, backend=backend)
        print(f"answer   : {state['answer']!r}")
        print(f"select   : {state['yes_no']!r}  scores {state.get_meta_info('yes_no').get('normalized_prompt_logprobs')}")
        print(f"regex    : {state['date']!r}")
        person = json.loads(state["person"])
        print(f"json     : {person}  (valid JSON with keys {sorted(person)})")
        print(f"forks    : {state['sentences']}")
        meta = state.get_meta_info()
        print(f"tokens   : {meta.get('prompt_tokens')} prompt, {meta.get('completion_tokens')} generated, "
              f"{meta.get('cached_tokens')} served from the radix cache")
        backend.engine.check_integrity()
    finally:
        backend.shutdown()
    print(f"done in {time.perf_counter() - start:.1f} s")
    return 0
