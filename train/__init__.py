"""Training for jtts' models, following NVIDIA DeepLearningExamples' recipe (DLE).

    tasks   -- one training task per model kind (batch layout, loss, defaults, data); jtts.models names them
    losses  -- DLE's training losses, and the optional guided-attention prior
    optim   -- torch.optim.Adam (L2 in the gradient) + clip_grad_norm_ as an Optax chain; NGC Adam state import
    step    -- jitted, data-parallel train/eval steps in float32, bfloat16 or float16 (dynamic loss scaling)
    loop    -- the training loop: Orbax checkpoints, exact resume, signals, validation pictures, JSON/TensorBoard logs
    rundir  -- the run directory: checks before anything loads, lock, checked checkpoints with fallback, log trim
    cli     -- the `jtts train` and `jtts preprocess` commands
    data    -- datasets, mel cache, bucketing and the Grain loader
"""
