"""Checkpoints in and out: finding one, streaming its tensors into a model, and writing one.

    load.py               load_model: a folder, a hub repo id or the embedded default -> Llama
    safetensors_file.py   a checkpoint's safetensors files, read one tensor at a time
    gguf.py               the embedded default's GGUF file -> an ordinary Hugging Face folder
    identity.py           which base model a folder holds (a name and a fingerprint)
    save.py               a Llama -> a Hugging Face folder (dense, or bitsandbytes 4-bit)

Hub downloads go through model/hub.py, which model/tokenizer/ uses too.
"""
