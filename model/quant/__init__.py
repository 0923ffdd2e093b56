"""4-bit NF4 weights, the "Q" in QLoRA.

    nf4_reference.py   the format in its plainest form: read this first
    nf4.py             the same format, bit-exact with bitsandbytes; what the project runs
    linear4bit.py      Linear4bit: a frozen linear layer that stores its weight in NF4
"""
