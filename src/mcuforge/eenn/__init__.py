"""Early-exit neural networks: augmentation of a trained model with exits, temporal decision
mechanisms, search over exits/decisions/mappings, and deployment as C.

Data flow::

    trained model ──cut──> backbone segments (int8 IR graphs) ──> final classifier
                               │ after segment k
                               └──> exit head k (int8 IR graph ending in softmax)
    stream of samples ──> decisions.decide() per sample (state kept between samples)
                      ──> (class, exit taken) ──> cost = instructions of what ran

`network.EarlyExitNetwork` is the artifact every stage exchanges; `decisions` is the integer
specification the generated C must follow bit for bit.
"""
