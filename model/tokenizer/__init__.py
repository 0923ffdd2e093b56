"""Text to token ids and back, and conversations to prompts.

    core.py        the Tokenizer interface: tiktoken BPE (Llama-3) and sentencepiece (Llama-2)
    hf_json.py     a Hugging Face tokenizer.json read into a tiktoken-run BPE
    load.py        load_tokenizer: find a model's tokenizer file and build the right kind
    chat.py        prompt formats (Llama-3 headers, ChatML, Alpaca) and their stop ids
    wordpiece.py   BERT's WordPiece, for the sentence encoder (model/minilm.py)
"""
