"""`dept serve`: many DePT adapters on one frozen backbone over HTTP (OpenAI-compatible).

- `app.py`: the FastAPI app (requests, errors, auth, streaming);
- `scheduler.py`: the model thread and its batching policies;
- `batch.py`: rows of different adapters decoding on one KV cache;
- `adapters.py`: which adapters are offered and which sit in the model (LRU);
- `text.py`: streamed text and stop strings.
"""
