"""The sizes a scenario is refused above (MIN_WINDOW_S: below), checked when it loads."""

# Sizes a run is refused above, before any work: each is far beyond a real deployment and
# below what exhausts a workstation (a simulated round keeps ~0.7 kB; 1,000 targets for one
# simulated hour take ~15 s and 0.6 GB).
MAX_UNITS = 100_000  # targets in all, and units of a device pool
MAX_TREE_TOP_K, MAX_TREE_DEPTH, MAX_TREE_TOKENS = 1_000, 64, 4_096
MAX_DURATION_S = 1e6  # 11.6 simulated days
MAX_CPU = 4095  # a core number (Linux's default NR_CPUS ceiling is 8192; none has more cores)
MAX_WINDOWS = 10_000_000  # duration_s / window_s: the idle-ratio series has one value per window
MIN_WINDOW_S = 1e-6
MAX_PROMPTS = 1_000_000  # a closed loop's prompt set is drawn up front
MAX_RATE_PER_S = 1e6  # open-loop arrivals
# 1 GiB per token (a 405B model's KV holds ~0.5 MB) and per message header: times 10M tokens
# still fits the 64-bit byte counts of the tables
MAX_BYTES_PER_TOKEN = 2**30
MAX_SEQS = 4096  # running sequences per target (vLLM's max_num_seqs defaults to 256 or 1024)
MAX_KV_TOKENS = 10**10
