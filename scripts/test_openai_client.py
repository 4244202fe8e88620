"""The `openai` Python package against a running `flexidepth serve` (its base URL is the first argument):
chat, streaming chat, completions with logprobs (as lm-evaluation-harness reads them), models, errors, and our
depth fields through `extra_body`. Streamed text must equal the plain text for the same seed."""

import json
import sys
import urllib.request

import openai

client = openai.OpenAI(base_url=sys.argv[1], api_key="unused", timeout=120, max_retries=0)
model = client.models.list().data[0].id
checks = 0


def check(cond, what):
    global checks
    if not cond:
        raise AssertionError(what)
    checks += 1


messages = [{"role": "user", "content": "Name three colours of the rainbow."}]

# Chat, greedy: an answer with usage and our depth object.
chat = client.chat.completions.create(
    model=model, messages=messages, max_tokens=24, temperature=0, extra_body={"depth_tokens": True}
)
text = chat.choices[0].message.content
check(isinstance(text, str) and text, f"chat text: {chat}")
check(chat.choices[0].finish_reason in ("stop", "length"), chat.choices[0].finish_reason)
check(chat.usage.total_tokens == chat.usage.prompt_tokens + chat.usage.completion_tokens, chat.usage)
depth = chat.model_extra["depth"]
check(depth["num_layers"] == 30 and len(depth["tokens"]) == chat.usage.completion_tokens, depth)

# Streaming chat: the same text as the plain reply, greedy and sampled with a seed.
for params in ({"temperature": 0}, {"temperature": 0.9, "seed": 7}):
    plain = client.chat.completions.create(model=model, messages=messages, max_tokens=20, **params)
    stream = client.chat.completions.create(model=model, messages=messages, max_tokens=20, stream=True, **params)
    streamed = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    check(streamed == plain.choices[0].message.content, f"{params}: {streamed!r} != {plain.choices[0].message.content!r}")

# Chat logprobs.
chat = client.chat.completions.create(
    model=model, messages=messages, max_tokens=5, temperature=0, logprobs=True, top_logprobs=3
)
content = chat.choices[0].logprobs.content
check(len(content) == chat.usage.completion_tokens and len(content[0].top_logprobs) == 3, content)
check(content[0].logprob <= 0 and content[0].logprob >= content[0].top_logprobs[-1].logprob, content[0])

# Completions with echo and logprobs: the harness's log-likelihood request.
prompt = "The capital of France is Paris"
tokenize = urllib.request.Request(
    sys.argv[1].removesuffix("/v1") + "/tokenize",
    data=json.dumps({"content": prompt, "add_special": True}).encode(),
    headers={"Content-Type": "application/json"},
)
with urllib.request.urlopen(tokenize, timeout=60) as r:
    n_prompt = json.load(r)["count"]
comp = client.completions.create(model=model, prompt=prompt, max_tokens=1, temperature=0, echo=True, logprobs=1)
lp = comp.choices[0].logprobs
check(len(lp.token_logprobs) == n_prompt + 1 and lp.token_logprobs[0] is None, lp)
check(all(x <= 0 for x in lp.token_logprobs[1:]), lp.token_logprobs)
check(all(max(top.values()) >= tok - 1e-6 for tok, top in zip(lp.token_logprobs[1:], lp.top_logprobs[1:])), lp)
check(comp.choices[0].text.startswith(prompt), comp.choices[0].text)

# Streamed completions equal plain ones for a seed.
plain = client.completions.create(model=model, prompt="Once upon a time", max_tokens=16, temperature=0.8, seed=3)
stream = client.completions.create(
    model=model, prompt="Once upon a time", max_tokens=16, temperature=0.8, seed=3, stream=True
)
check("".join(c.choices[0].text for c in stream if c.choices) == plain.choices[0].text, "streamed completion")

# Errors arrive as the client's exceptions, with OpenAI's shape.
try:
    client.chat.completions.create(model=model, messages=[], max_tokens=4)
    check(False, "empty messages must fail")
except openai.BadRequestError as e:
    check(e.status_code == 400 and "messages" in e.message, e)

print(f"openai {openai.__version__}: {checks} checks passed against {sys.argv[1]}")
