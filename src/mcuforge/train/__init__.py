"""On-device fully quantized training (FQT) with dynamic partial gradient updates.

* program.py  the static part: which layers train, error scales, integer constants (generation time)
* fixed.py    integer helpers of the training arithmetic (numpy; kernels/mf_train.h in C)
* fqt.py      the numpy twin: the specification of every integer a training step computes
* memory.py   the training step's memory plan
* codegen.py  `<prefix>_train_step()` in the generated C library (deploy --train)
* runner.py   training runs: reference (twin), host C, Cortex-M firmware on QEMU
* scenario.py the digits domain-adaptation scenario and its float32 baseline
See docs/training.md.
"""

from .program import TrainConfig, build_program, resolve_trainable

__all__ = ["TrainConfig", "build_program", "resolve_trainable"]
