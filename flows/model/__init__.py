"""The reference model: a byte-level GPT (``gpt``), its training (``training``), its evaluation
(``evaluation``) and its MLflow pyfunc (``pyfunc``), with the corpus and golden prompts in ``data/``.

Plain torch and MLflow: nothing here knows Prefect. Importing the package imports none of them.
"""
