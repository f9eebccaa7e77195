"""Training for jtts' Tacotron 2 and WaveGlow, following NVIDIA DeepLearningExamples' recipe (DLE).

    losses  -- DLE's two training losses
    optim   -- torch.optim.Adam (L2 in the gradient) + clip_grad_norm_ as an Optax chain; NGC Adam state import
    step    -- jitted, data-parallel train/eval steps in float32, bfloat16 or float16 (dynamic loss scaling)
    loop    -- the training loop: Orbax checkpoints, exact resume, validation pictures, JSON/TensorBoard logs
    cli     -- the `jtts train` command
    data    -- datasets, mel cache, bucketing and the Grain loader
"""
