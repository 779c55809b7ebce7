"""The accelerated path of the model, beside the plain one in :mod:`dpa1.model`.

- :mod:`~dpa1.accel.build`: builds and loads the C++ op library (``csrc/``);
- :mod:`~dpa1.accel.settings`: the switch (``DPA1_NATIVE``) and the speed knobs (``TUNING``);
- :mod:`~dpa1.accel.energy_block`: a whole block of centres (descriptor and fitting net) as one
  op with a C++ backward, in eager evaluation and in frozen TorchScript models;
- :mod:`~dpa1.accel.attention_op`, :mod:`~dpa1.accel.embedding_op`: the attention layers and
  the embedding net as ops, for models the block op does not cover;
- :mod:`~dpa1.accel.formulas`: hand-written backwards of three PyTorch expressions;
- :mod:`~dpa1.accel.block_pool`: evaluation blocks side by side on the CPU threads.

The model reaches all of it through one module, :mod:`dpa1.model.accel_hook`. Every path here
gives the plain model's numbers up to round-off (``tests/test_tuned_paths.py``).
"""
