"""The DPA-1 energy model: network layers, type embedding, environment matrix,
gated attention, the ``se_atten`` descriptor, the energy fitting and the model
that ties them together with autograd forces and virials."""
