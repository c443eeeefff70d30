"""The training hooks' old import path: they live in alphaspec/maps/hook.py and maps/lr_hook.py."""

from .distributed import full_tensor, process_group, share_of_work  # noqa: F401
from .maps.groups import merge_param_groups, split_param_groups  # noqa: F401
from .maps.hook import AlphaDecay  # noqa: F401
from .maps.lr_hook import AlphaLR  # noqa: F401
