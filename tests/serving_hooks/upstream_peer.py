"""The tests' upstream peer: the package's fixed local OpenAI-compatible server
(:mod:`gpt_observatory.demo.upstream`, which the demo runs as its fleet's replicas), under the name the
tests and benches use (``python -m tests.serving_hooks.upstream_peer --port P`` runs it too)."""

from gpt_observatory.demo.upstream import PROMPT_TOKENS, STALL_S, TEXT, UpstreamPeer, main

__all__ = ["PROMPT_TOKENS", "STALL_S", "TEXT", "UpstreamPeer", "main"]

if __name__ == "__main__":
    main()
