"""Every closed set of choices, in one torch-free place: the core checks against these tuples and the CLI
builds its options from them, so a choice is spelled once and a bad one is a usage error everywhere."""

ESTIMATORS = ("median", "gof", "fix-finger", "fix-finger-legacy")  # how xmin is chosen (docs/math.md §2)
ESD_PRECISIONS = ("fp64", "fp32")  # the Gram product and eigen-solve of analyze (fp32: opt-in, for the largest models)
ASSIGN = ("linear", "sqrt", "log2", "sigmoid")  # metric -> decay (docs/math.md §3)
PRESERVE = ("none", "modules", "params")  # --preserve-mean
DECAY_METRICS = ("alpha", "alpha_excess",
                 "alpha_farms", "alpha_weighted", "spectral_norm", "frobenius_norm", "stable_rank", "log_spectral_norm",
                 "log_norm", "entropy", "lambda_max")  # what decays can be assigned from
MAP_KINDS = ("weight_decay", "lr", "sparsity", "lora_rank")  # what a map's values are
DEFAULT_POLICIES = ("all", "matrices")  # --default-decay, besides a number
STRATEGIES = ("uniform", "alphadecay", "awd", "adadecay", "lrm", "cautious", "mup", "tempbalance", "llr")
LR_STRATEGIES = ("tempbalance", "llr")  # strategies that set per-matrix learning rates (uniform decay)
LR_ASSIGN = ("linear", "sqrt", "log2", "step", "sigmoid")  # metric -> learning-rate multiplier
MODELS = ("tiny", "llama-20m", "llama-60m", "llama-130m", "llama-350m", "llama-1b")  # GaLore's LLaMA shapes
MULTIPLIERS = ("none", "vector", "full", "scalar")  # learnable-multiplier placements
OPTIMIZERS = ("adamw", "adam", "muon")
MUON_LR_ADJUSTMENTS = ("match_rms_adamw", "original")  # torch.optim.Muon adjust_lr_fn
PRECISIONS = ("auto", "bf16", "fp32")
SHARDINGS = ("ddp", "fsdp")
REPORT_TO = ("none", "tensorboard", "wandb")  # where `train` sends its scalars besides the CSV logs
PACKINGS = ("concat", "docs")  # windows of the document stream, or one padded document per row
ALPHADECAY_WARMUPS = ("init", "uniform")
FIGURES = ("spectra", "alpha-modules", "alpha-depth", "esd", "decay", "map", "training", "multipliers", "series",
           "zoo")
MANY_FIGURES = ("series", "zoo")  # those drawn from a long table of several sources
CHECKPOINT_FIGURES = FIGURES[:6]  # those drawn from a results table (plots/render.py)
MODEL_FIGURES = FIGURES[:3]  # those drawn for a model when no kind is named
FORMATS = ("png", "svg", "pdf")
