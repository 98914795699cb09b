from .continual import (average_incremental_accuracy, backward_transfer, final_accuracy, forgetting, summarize,
                        to_matrix)
from .model_stats import count_flops, count_nonzero, count_params, fp32_bytes

__all__ = ["average_incremental_accuracy", "backward_transfer", "final_accuracy", "forgetting", "summarize",
           "to_matrix", "count_flops", "count_nonzero", "count_params", "fp32_bytes"]
