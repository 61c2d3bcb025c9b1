"""The `llm` QA generator and everything only it uses; the rest of dataprep never imports `openai`.

    generator.py   LLMGenerator: what to send, paying for, validating, caching and retrying each reply
    prompt.py      the versioned prompt, the reply's JSON schema and its validation
    budget.py      the token estimate before a send and the retry budgets (MAX_SENDS_PER_REPORT); list prices and
                   the --max-cost ledger are the core's (cxr_vqa/costs.py)
    batch_api.py   the OpenAI Batch API transport (--batch-api)
    cache.py       the content-addressed reply cache, rejections remembered included

One send, which failures may be sent again and the backoff between sends are the core's (cxr_vqa.endpoint), shared
with every other caller of an OpenAI-compatible endpoint.
"""
